//! Outbound HTTP the ordinary way: `wstd`'s client over the standard `wasi:http` interface,
//! unchanged. The host checks every request against the capsule's `net://` grants; this
//! capsule only reports what came back, errors included, so callers can see the host's
//! refusals as a capsule does.

use std::collections::BTreeMap;
use std::time::Duration;

use capsid_guest::{Capsule, Error, Json, Tools};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use wstd::http::{Body, Client, Request};

/// Body bytes answered as text unless the caller asks for another amount.
const DEFAULT_KEEP: usize = 64 * 1024;

#[derive(Deserialize)]
struct Get {
    url: String,
    method: Option<String>,
    body: Option<String>,
    /// Sends this many bytes of `y` as the body instead of `body`.
    body_bytes: Option<usize>,
    keep: Option<usize>,
    between_bytes_ms: Option<u64>,
}

#[derive(Serialize, Default)]
struct Fetched {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    headers: BTreeMap<String, String>,
    /// Body bytes read, all of them (only the first `keep` are in `body`).
    bytes: u64,
    body: String,
    /// Why the request, or reading its body, failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The wasi:http error code inside `e` when there is one (`HttpRequestDenied`), else `e`.
fn describe(e: &wstd::http::Error) -> String {
    match e.downcast_ref::<wstd::http::error::ErrorCode>() {
        Some(code) => format!("{code:?}"),
        None => format!("{e:#}"),
    }
}

async fn fetch(input: Get) -> Result<Fetched, Error> {
    let bad = |e: &dyn std::fmt::Display| capsid_guest::invalid(e.to_string());
    let request = Request::builder()
        .method(input.method.as_deref().unwrap_or("GET"))
        .uri(&input.url)
        .body(match input.body_bytes {
            Some(n) => Body::from(vec![b'y'; n]),
            None => Body::from(input.body.unwrap_or_default()),
        })
        .map_err(|e| bad(&e))?;
    let mut client = Client::new();
    if let Some(ms) = input.between_bytes_ms {
        client.set_between_bytes_timeout(Duration::from_millis(ms));
    }
    let mut out = Fetched::default();
    let response = match client.send(request).await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(describe(&e));
            return Ok(out);
        }
    };
    out.status = Some(response.status().as_u16());
    for (name, value) in response.headers() {
        out.headers.insert(
            name.as_str().to_owned(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        );
    }
    let keep = input.keep.unwrap_or(DEFAULT_KEEP);
    let mut kept = Vec::new();
    let mut body = response.into_body().into_boxed_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    out.bytes += data.len() as u64;
                    let room = keep.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..room.min(data.len())]);
                }
            }
            Err(e) => {
                out.error = Some(describe(&e));
                break;
            }
        }
    }
    out.body = String::from_utf8_lossy(&kept).into_owned();
    Ok(out)
}

fn get(Json(input): Json<Get>) -> Result<Json<Fetched>, Error> {
    wstd::runtime::block_on(fetch(input)).map(Json)
}

#[derive(Deserialize)]
struct GetMany {
    url: String,
    count: usize,
}

#[derive(Serialize)]
struct Many {
    ok: usize,
    failed: usize,
    errors: Vec<String>,
}

/// `count` GETs of `url`, all started before any is awaited.
fn get_many(Json(input): Json<GetMany>) -> Result<Json<Many>, Error> {
    if !(1..=1000).contains(&input.count) {
        return Err(capsid_guest::invalid("count must be 1..=1000"));
    }
    let many = wstd::runtime::block_on(async {
        let tasks: Vec<_> = (0..input.count)
            .map(|_| {
                let url = input.url.clone();
                wstd::runtime::spawn(async move {
                    fetch(Get {
                        url,
                        method: None,
                        body: None,
                        body_bytes: None,
                        keep: Some(0),
                        between_bytes_ms: None,
                    })
                    .await
                })
            })
            .collect();
        let mut many = Many {
            ok: 0,
            failed: 0,
            errors: Vec::new(),
        };
        for task in tasks {
            let error = match task.await {
                Ok(Fetched { error: None, .. }) => None,
                Ok(Fetched { error: Some(e), .. }) => Some(e),
                Err(e) => Some(format!("{e:?}")),
            };
            match error {
                None => many.ok += 1,
                Some(e) => {
                    many.failed += 1;
                    if !many.errors.contains(&e) {
                        many.errors.push(e);
                    }
                }
            }
        }
        many
    });
    Ok(Json(many))
}

#[derive(Deserialize)]
struct Ask {
    uri: String,
    permission: String,
    reason: String,
}

#[derive(Serialize)]
struct Asked {
    decision: &'static str,
}

/// Asks a person ahead, as a capsule would before a long download.
fn ask(Json(input): Json<Ask>) -> Result<Json<Asked>, Error> {
    use capsid_guest::approval::{Decision, request};
    let decision = match request(&input.uri, &input.permission, &input.reason) {
        Decision::AlreadyGranted => "already-granted",
        Decision::Once => "once",
        Decision::Session => "session",
        Decision::Always => "always",
        Decision::Denied => "denied",
    };
    Ok(Json(Asked { decision }))
}

struct Fetch;

impl Capsule for Fetch {
    const TOOLS: Tools = capsid_guest::tools! {
        "get" => get,
        "get-many" => get_many,
        "ask" => ask,
    };
}

capsid_guest::capsule!(Fetch);
