//! Typed tools: a capsule lists its tools once with [`tools!`](crate::tools!), each a plain
//! function, and the SDK parses inputs, encodes outputs and answers names it does not know.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// A tool's input parsed from JSON, or its output encoded as JSON.
///
/// ```ignore
/// fn greet(Json(who): Json<Who>) -> Result<Json<Greeting>, Error>
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

/// A tool's input or output exactly as the JSON text on the wire, neither parsed nor encoded:
/// for tools that pass JSON through. The capsule vouches that an output is JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawJson(pub String);

/// What a tool function takes as its input: [`Json<T>`] or [`RawJson`].
pub trait FromInput: Sized {
    /// Reads `input`, the JSON text the caller sent to tool `tool`.
    fn from_input(tool: &str, input: String) -> Result<Self, Error>;
}

/// What a tool function returns on success: [`Json<T>`] or [`RawJson`].
pub trait IntoOutput {
    /// The JSON text tool `tool` answers with.
    fn into_output(self, tool: &str) -> Result<String, Error>;
}

impl<T: DeserializeOwned> FromInput for Json<T> {
    fn from_input(tool: &str, input: String) -> Result<Self, Error> {
        serde_json::from_str(&input)
            .map(Json)
            .map_err(|e| Error::Invalid(format!("invalid input for tool {tool:?}: {e}")))
    }
}

impl FromInput for RawJson {
    fn from_input(_tool: &str, input: String) -> Result<Self, Error> {
        Ok(RawJson(input))
    }
}

impl<T: Serialize> IntoOutput for Json<T> {
    fn into_output(self, tool: &str) -> Result<String, Error> {
        serde_json::to_string(&self.0).map_err(|e| {
            Error::Internal(format!(
                "tool {tool:?} cannot encode its output as JSON: {e}"
            ))
        })
    }
}

impl IntoOutput for RawJson {
    fn into_output(self, _tool: &str) -> Result<String, Error> {
        Ok(self.0)
    }
}

/// A function that answers a tool: `fn() -> Result<O, Error>` or `fn(I) -> Result<O, Error>`,
/// where `I` is a [`FromInput`] and `O` an [`IntoOutput`]. `Args` only tells the two shapes
/// apart; it is inferred.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot answer a tool",
    note = "a tool function takes nothing, a `Json<In>` or a `RawJson`, and returns \
            `Result<Json<Out>, Error>` or `Result<RawJson, Error>`"
)]
pub trait Handler<Args> {
    /// Runs tool `tool` on `input` (JSON text), returning JSON text.
    fn handle(&self, tool: &str, input: String) -> Result<String, Error>;
}

impl<F, O> Handler<()> for F
where
    F: Fn() -> Result<O, Error>,
    O: IntoOutput,
{
    fn handle(&self, tool: &str, _input: String) -> Result<String, Error> {
        self()?.into_output(tool)
    }
}

impl<F, I, O> Handler<(I,)> for F
where
    F: Fn(I) -> Result<O, Error>,
    I: FromInput,
    O: IntoOutput,
{
    fn handle(&self, tool: &str, input: String) -> Result<String, Error> {
        self(I::from_input(tool, input)?)?.into_output(tool)
    }
}

/// One tool a capsule answers: its name and the function that runs it. Made by
/// [`tools!`](crate::tools!).
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    name: &'static str,
    run: fn(String) -> Result<String, Error>,
}

impl Tool {
    #[doc(hidden)]
    pub const fn __new(name: &'static str, run: fn(String) -> Result<String, Error>) -> Self {
        Tool { name, run }
    }

    /// The tool's name, as its `Capsule.toml` declares it.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// The tools a capsule answers, as [`Capsule::TOOLS`](crate::Capsule::TOOLS) holds them.
pub type Tools = &'static [Tool];

/// Runs tool `name` of `tools` on `input`; a name that is not among them is answered with
/// [`unknown_tool`](crate::unknown_tool).
pub fn dispatch(tools: &[Tool], name: &str, input: String) -> Result<String, Error> {
    match tools.iter().find(|tool| tool.name == name) {
        Some(tool) => (tool.run)(input),
        None => Err(crate::unknown_tool(name)),
    }
}

/// Refuses, at compile time, a list of tool names the section could not carry or the
/// dispatcher could not tell apart.
#[doc(hidden)]
pub const fn __check_tool_names(names: &[&str]) {
    let mut i = 0;
    while i < names.len() {
        let name = names[i].as_bytes();
        assert!(!name.is_empty(), "tools!: a tool name cannot be empty");
        let mut b = 0;
        while b < name.len() {
            assert!(
                name[b] != b'\n',
                "tools!: a tool name cannot hold a newline"
            );
            b += 1;
        }
        let mut j = 0;
        while j < i {
            assert!(
                !same_bytes(names[j].as_bytes(), name),
                "tools!: a tool is listed twice"
            );
            j += 1;
        }
        i += 1;
    }
}

const fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `names` as a byte array: a custom section must hold bytes, not a reference to them.
#[doc(hidden)]
pub const fn __tool_names_section<const N: usize>(names: &str) -> [u8; N] {
    let names = names.as_bytes();
    assert!(names.len() == N, "tools!: section length mismatch");
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = names[i];
        i += 1;
    }
    out
}

/// The tools a capsule answers, for [`Capsule::TOOLS`](crate::Capsule::TOOLS): each tool's
/// name (as its `Capsule.toml` declares it) and the function that answers it (see
/// [`Handler`]).
///
/// ```ignore
/// impl Capsule for Counter {
///     const TOOLS: Tools = capsid_guest::tools! {
///         "increment" => increment,
///         "get" => get,
///     };
/// }
/// ```
///
/// The names also go into the component's `capsid-tools` custom section, one per line, where
/// `cargo xtask build-capsules` compares them with the manifest's `[[tool]]` entries. A name
/// listed twice, empty or holding a newline fails the build.
#[macro_export]
macro_rules! tools {
    ($($name:literal => $handler:expr),+ $(,)?) => {{
        const __CAPSID_TOOL_NAMES: &str = ::core::concat!($($name, "\n"),+);
        const _: () = $crate::__check_tool_names(&[$($name),+]);
        #[used]
        #[unsafe(link_section = "capsid-tools")]
        static __CAPSID_TOOLS_SECTION: [u8; __CAPSID_TOOL_NAMES.len()] =
            $crate::__tool_names_section(__CAPSID_TOOL_NAMES);
        &[$($crate::Tool::__new($name, |input| {
            $crate::Handler::handle(&$handler, $name, input)
        })),+]
    }};
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Deserialize)]
    struct Add {
        a: u32,
        #[serde(default)]
        b: u32,
    }

    #[derive(Serialize)]
    struct Sum {
        sum: u32,
    }

    fn add(Json(input): Json<Add>) -> Result<Json<Sum>, Error> {
        Ok(Json(Sum {
            sum: input.a + input.b,
        }))
    }

    fn zero() -> Result<Json<Sum>, Error> {
        Ok(Json(Sum { sum: 0 }))
    }

    fn echo(input: RawJson) -> Result<RawJson, Error> {
        Ok(input)
    }

    fn refuse() -> Result<RawJson, Error> {
        Err(Error::Denied)
    }

    const TOOLS: Tools = crate::tools! {
        "add" => add,
        "zero" => zero,
        "echo" => echo,
        "refuse" => refuse,
    };

    fn call(name: &str, input: &str) -> Result<String, Error> {
        dispatch(TOOLS, name, input.to_owned())
    }

    #[test]
    fn a_tool_gets_its_input_parsed_and_its_output_encoded() {
        assert_eq!(call("add", r#"{"a":2,"b":3}"#).unwrap(), r#"{"sum":5}"#);
        assert_eq!(call("add", r#"{"a":2}"#).unwrap(), r#"{"sum":2}"#);
    }

    #[test]
    fn a_tool_without_input_ignores_what_it_is_sent() {
        assert_eq!(call("zero", "not even JSON").unwrap(), r#"{"sum":0}"#);
    }

    #[test]
    fn raw_json_passes_through_untouched() {
        assert_eq!(
            call("echo", r#"{ "b":1, "a":2 }"#).unwrap(),
            r#"{ "b":1, "a":2 }"#
        );
    }

    #[test]
    fn a_bad_input_is_invalid_and_names_the_tool_and_the_problem() {
        let Err(Error::Invalid(message)) = call("add", r#"{"b":1}"#) else {
            panic!("a missing field is invalid");
        };
        assert!(
            message.starts_with(r#"invalid input for tool "add": "#),
            "{message}"
        );
        assert!(message.contains("missing field `a`"), "{message}");
        assert!(matches!(call("add", "not json"), Err(Error::Invalid(_))));
    }

    #[test]
    fn a_handlers_error_is_the_answer() {
        assert!(matches!(call("refuse", "{}"), Err(Error::Denied)));
    }

    #[test]
    fn a_tool_not_listed_is_answered_by_the_sdk() {
        let Err(Error::Invalid(message)) = call("nope", "{}") else {
            panic!("an unknown tool is invalid");
        };
        assert_eq!(message, r#"the capsule does not implement tool "nope""#);
    }

    #[test]
    fn the_tools_keep_their_names_in_order() {
        let names: Vec<&str> = TOOLS.iter().map(Tool::name).collect();
        assert_eq!(names, ["add", "zero", "echo", "refuse"]);
    }

    #[test]
    fn the_section_holds_one_name_a_line() {
        let section: [u8; 9] = __tool_names_section("add\nzero\n");
        assert_eq!(&section, b"add\nzero\n");
    }
}
