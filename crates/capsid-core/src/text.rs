//! Text from capsules, made safe to show a person.

/// `text` safe to show a person (a terminal, an MCP client's prompt): control and invisible format characters (bidi
/// overrides, zero-width spaces) are shown as `\u{...}`, so a capsule's resource or reason
/// cannot rewrite what the person deciding reads.
pub fn printable(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c,
                '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}'
                | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
    };
    text.chars()
        .map(|c| {
            if hidden(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn hidden_characters_are_shown_escaped_and_the_rest_kept() {
        assert_eq!(printable("fs://workspace/é.md"), "fs://workspace/é.md");
        assert_eq!(
            printable("a\u{202e}dm.exe\u{200b}\n"),
            "a\\u{202e}dm.exe\\u{200b}\\u{a}"
        );
    }
}
