//! Escaping for text meant for a terminal or a text file someone will `cat`:
//! anything a workload chose (process names via `prctl(PR_SET_NAME)`, cgroup
//! names in a delegated subtree, container labels) is printed through here, so
//! it cannot move the cursor, retitle the window, hide text (CR, ESC, BEL, C1)
//! or reorder what follows (Unicode bidi overrides, Trojan Source style).
//! The one helper every text renderer uses: `line`, `zombies`, `census`,
//! `doctor`, the report's Markdown (and, through `svg::esc`, HTML and SVG).

use std::{borrow::Cow, fmt};

/// Characters that change how the terminal (or a bidi-aware viewer) shows
/// the text around them: C0, DEL, C1, and the Unicode format characters that
/// reorder or hide text.
pub fn hostile(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}'                  // arabic letter mark
            | '\u{200b}'..='\u{200f}'   // zero-width space/joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}'   // line and paragraph separators
            | '\u{202a}'..='\u{202e}'   // bidi embeddings and overrides
            | '\u{2060}'..='\u{2069}'   // word joiner .. bidi isolates
            | '\u{feff}'                // zero-width no-break space
        )
}

/// `\x1b`, `\u{202e}`: how an escaped character reads.
pub fn push_escaped(out: &mut String, c: char) {
    use fmt::Write;
    // Writing to a String cannot fail.
    let _ = match c as u32 {
        n @ 0..=0xff => write!(out, "\\x{n:02x}"),
        n => write!(out, "\\u{{{n:04x}}}"),
    };
}

fn escape(s: &str, keep_newline: bool) -> Cow<'_, str> {
    let bad = |c: char| hostile(c) && !(keep_newline && c == '\n');
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One field (a name, a path, a label): every control character escaped,
/// newlines and tabs included, as `\x1b`, `\u{202e}`. Borrows when clean.
pub fn term(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// A whole document or table whose own line breaks stay: everything else
/// that [`term`] escapes is escaped.
pub fn term_lines(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// Bytes that may not be UTF-8 (a raw `comm`): invalid sequences as `\xNN`,
/// the rest as [`term`].
pub fn term_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        out.push_str(&term(chunk.valid()));
        for x in chunk.invalid() {
            push_escaped(&mut out, char::from(*x));
        }
    }
    out
}

/// [`term`] for `format!`: `format!("{}", Term(name))` without a temporary String.
pub struct Term<'a>(pub &'a str);

impl fmt::Display for Term<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&term(self.0))
    }
}

/// Names a hostile workload can choose, for the renderers' tests.
#[cfg(test)]
pub const HOSTILE: &[&str] = &[
    "\x1b]0;owned\x07",   // OSC: retitle the terminal, BEL-terminated
    "\x1b[2J\x1b[Hfake",  // clear the screen
    "ok\rEVIL",           // CR overwrites the start of the line
    "a\u{202e}gnp.exe",   // RLO: text shown reversed
    "x\u{2066}y\u{2069}", // isolates
    "\u{9b}31m",          // C1 CSI
    "bell\x07",
    "two\nlines",
];

/// Asserts that rendered text carries nothing a terminal would act on.
#[cfg(test)]
pub fn assert_inert(text: &str) {
    if let Some(c) = text.chars().find(|c| hostile(*c) && *c != '\n') {
        panic!("{c:?} reached the output: {text:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_print_as_visible_escapes() {
        for h in HOSTILE {
            let e = term(h);
            assert!(!e.chars().any(hostile), "{h:?} -> {e:?}");
            assert!(!e.contains('\n'));
        }
        assert_eq!(term("\x1b[2J"), "\\x1b[2J");
        assert_eq!(term("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(term("ok\rEVIL"), "ok\\x0dEVIL");
        assert_eq!(term("\u{9b}"), "\\x9b");
        assert_eq!(term_lines("a\nb\x1b"), "a\nb\\x1b");
        assert_eq!(format!("[{:<6}]", Term("a\x07")), "[a\\x07 ]");
    }

    #[test]
    fn clean_text_is_borrowed_and_unchanged() {
        for s in [
            "/kubepods/burstable/pod1/abc",
            "nginx",
            "ünïcödé 名前",
            "a\\x2d",
        ] {
            assert!(matches!(term(s), Cow::Borrowed(_)), "{s}");
        }
    }

    #[test]
    fn invalid_utf8_is_escaped_byte_by_byte() {
        assert_eq!(term_bytes(b"ok\xff\xfe\x1b"), "ok\\xff\\xfe\\x1b");
        assert_eq!(term_bytes("名".as_bytes()), "名");
    }
}
