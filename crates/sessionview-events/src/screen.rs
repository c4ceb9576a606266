//! One linear pass over an envelope's text before it is parsed: nesting depth, U+0000 and lone
//! surrogate escapes, which serde would accept (or recurse on) but the read model cannot hold.

use std::fmt;

/// The deepest nesting of objects and arrays an envelope may have (the envelope itself is 1).
pub const MAX_DEPTH: usize = 64;

/// What the screen refused, with the byte offset where it saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// More than [`MAX_DEPTH`] nested objects or arrays.
    TooDeep { at: usize },
    /// A string (key or value) contains U+0000, as the escape `\u0000`.
    Nul { at: usize },
    /// A `\uD800`–`\uDFFF` escape that is not half of a surrogate pair.
    LoneSurrogate { at: usize, code: u16 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Refusal::TooDeep { at } => write!(
                f,
                "JSON nested deeper than {MAX_DEPTH} levels (at byte {at})"
            ),
            Refusal::Nul { at } => write!(
                f,
                "a string contains U+0000 (at byte {at}), which the read model cannot store"
            ),
            Refusal::LoneSurrogate { at, code } => {
                write!(f, "lone surrogate escape \\u{code:04x} (at byte {at})")
            }
        }
    }
}

/// Screens JSON text. Text that is not JSON at all passes whatever it holds outside strings;
/// the parser refuses it next.
pub(crate) fn screen(text: &[u8]) -> Result<(), Refusal> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Refusal::TooDeep { at: i });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => i = string_end(text, i + 1)?,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Scans a string body starting after its opening quote; returns the index of its closing quote
/// (or the end of the text when it is unterminated).
fn string_end(text: &[u8], mut i: usize) -> Result<usize, Refusal> {
    // The high half of a surrogate pair seen just before, waiting for its low half.
    let mut high: Option<(usize, u16)> = None;
    while i < text.len() {
        match text[i] {
            b'"' => break,
            b'\\' if text.get(i + 1) == Some(&b'u') => {
                let Some(code) = hex4(text.get(i + 2..i + 6)) else {
                    // Not a valid escape: the parser says so.
                    i += 2;
                    continue;
                };
                match (high.take(), code) {
                    (_, 0) => return Err(Refusal::Nul { at: i }),
                    (None, 0xD800..=0xDBFF) => high = Some((i, code)),
                    (Some(_), 0xDC00..=0xDFFF) => {}
                    (Some((at, code)), _) => return Err(Refusal::LoneSurrogate { at, code }),
                    (None, 0xDC00..=0xDFFF) => return Err(Refusal::LoneSurrogate { at: i, code }),
                    (None, _) => {}
                }
                i += 6;
                continue;
            }
            b'\\' => i += 1,
            _ => {}
        }
        if let Some((at, code)) = high.take() {
            return Err(Refusal::LoneSurrogate { at, code });
        }
        i += 1;
    }
    match high {
        Some((at, code)) => Err(Refusal::LoneSurrogate { at, code }),
        None => Ok(i),
    }
}

fn hex4(digits: Option<&[u8]>) -> Option<u16> {
    let digits = std::str::from_utf8(digits?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screened(s: &str) -> Result<(), Refusal> {
        screen(s.as_bytes())
    }

    #[test]
    fn plain_json_passes() {
        screened(r#"{"a":[1,{"b":"x\"y\\"}],"c":"\u00e9\ud83d\ude00"}"#).unwrap();
        // Brackets inside strings are not nesting.
        let many = format!(r#"{{"a":"{}"}}"#, "[".repeat(1000));
        screened(&many).unwrap();
    }

    #[test]
    fn depth_is_counted_outside_strings_only() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        screened(&ok).unwrap();
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(screened(&deep), Err(Refusal::TooDeep { at: MAX_DEPTH }));
        // Unbalanced closers cannot make room for more openers than the limit.
        let tricky = format!("]]]]{}", "{".repeat(MAX_DEPTH + 1));
        assert!(matches!(screened(&tricky), Err(Refusal::TooDeep { .. })));
    }

    #[test]
    fn nul_escapes_are_refused_in_keys_and_values() {
        assert_eq!(screened(r#"{"a":"x\u0000"}"#), Err(Refusal::Nul { at: 7 }));
        assert!(matches!(
            screened(r#"{"\u0000":1}"#),
            Err(Refusal::Nul { .. })
        ));
        // An escaped backslash followed by u0000 is text, not an escape.
        screened(r#"{"a":"\\u0000"}"#).unwrap();
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for s in [
            r#""\ud800""#,
            r#""\ud800x""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800\\""#,
        ] {
            assert!(
                matches!(screened(s), Err(Refusal::LoneSurrogate { .. })),
                "{s}"
            );
        }
        screened(r#""\uD83D\uDE00""#).unwrap();
    }
}
