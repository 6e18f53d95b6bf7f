//! Property tests: no spelling of a path escapes a pattern, and glob matching agrees with a
//! slow reference implementation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use capsid_capabilities::{Pattern, Resource};
use proptest::prelude::*;

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just(String::new()),
        Just("%2e%2e".to_owned()),
        Just("a%2f..".to_owned()),
        Just("a\0".to_owned()),
        Just("..\\a".to_owned()),
        Just("a.md".to_owned()),
        Just("*".to_owned()),
        Just("~".to_owned()),
        "[a-c./%\\\\*]{0,4}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn nothing_outside_a_matches_a_pattern_for_a(pieces in prop::collection::vec(piece(), 0..8)) {
        let pattern = Pattern::parse("fs://workspace/a/**").unwrap();
        let text = format!("fs://workspace/{}", pieces.join("/"));
        if let Ok(resource) = Resource::parse(&text) {
            for seg in resource.segments() {
                prop_assert!(!seg.is_empty() && seg != "." && seg != "..", "{text:?} kept {seg:?}");
                prop_assert!(!seg.contains('%') && !seg.contains('\0') && !seg.contains('\\'));
            }
            if pattern.matches(&resource) {
                prop_assert_eq!(resource.segments().first().map(String::as_str), Some("a"), "{:?}", text);
            }
        }
    }

    #[test]
    fn glob_matching_agrees_with_the_reference(
        pat in prop::collection::vec(prop_oneof![Just("**"), Just("*"), Just("a*"), Just("*b"), Just("a"), Just("b"), Just("ab")], 0..6),
        res in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("ab"), Just("ba"), Just("aab")], 0..6),
    ) {
        let p = ["fs://w"].iter().chain(&pat).copied().collect::<Vec<_>>().join("/");
        let r = ["fs://w"].iter().chain(&res).copied().collect::<Vec<_>>().join("/");
        let fast = Pattern::parse(&p).unwrap().matches(&Resource::parse(&r).unwrap());
        prop_assert_eq!(fast, reference(&pat, &res), "{} vs {}", p, r);
    }
}

/// Exponential but obviously right.
fn reference(pat: &[&str], res: &[&str]) -> bool {
    match pat.split_first() {
        None => res.is_empty(),
        Some((&"**", rest)) => (0..=res.len()).any(|k| reference(rest, &res[k..])),
        Some((p, rest)) => {
            !res.is_empty() && seg(p.as_bytes(), res[0].as_bytes()) && reference(rest, &res[1..])
        }
    }
}

fn seg(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| seg(rest, &s[k..])),
        Some((c, rest)) => s.first() == Some(c) && seg(rest, &s[1..]),
    }
}
