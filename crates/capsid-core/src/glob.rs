//! Glob matching, shared by capability patterns and event-bus subscriptions so that a `*`
//! means the same thing in both.

/// Whether `items` match `pattern`, where elements for which `is_star` holds match any run of
/// items (including none) and every other element matches exactly one item by `one`.
/// Linear-time backtracking to the last star, as in classic glob matching; no recursion, so
/// hostile input cannot blow the stack or take exponential time.
pub fn wildcard<P, I>(
    pattern: &[P],
    items: &[I],
    is_star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &I) -> bool,
) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < items.len() {
        if p < pattern.len() && is_star(&pattern[p]) {
            star = Some((p, i));
            p += 1;
        } else if p < pattern.len() && one(&pattern[p], &items[i]) {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && is_star(&pattern[p]) {
        p += 1;
    }
    p == pattern.len()
}

/// [`wildcard`] over bytes with `*` as the star (exact for UTF-8 text: `*` is ASCII).
pub fn glob_bytes(pattern: &[u8], text: &[u8]) -> bool {
    wildcard(pattern, text, |c| *c == b'*', |c, t| c == t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_match_any_run() {
        assert!(glob_bytes(b"notes.*", b"notes.created"));
        assert!(glob_bytes(b"notes.*", b"notes."));
        assert!(glob_bytes(b"*", b""));
        assert!(glob_bytes(b"a*b*c", b"axxbyyc"));
        assert!(!glob_bytes(b"a*b*c", b"axxbyy"));
        assert!(!glob_bytes(b"notes.*", b"note.x"));
        assert!(glob_bytes(b"**", b"anything"));
    }
}
