//! Secrets and redaction.
//!
//! A password must never reach a log line, an error message or a child's argv. The type system
//! carries most of that weight: [`Secret`] has no way to print its contents, and the only way to
//! read one is [`Secret::expose`], which is easy to grep for. [`Redactor`] is the safety net for
//! text we do not control, such as a child's stderr.

use std::fmt;

/// A string that must not be printed. `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The only way to read the value: call sites are the places that hand it to a child's
    /// environment or a 0600 file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replaces known secret strings, and the password part of any `scheme://user:pass@host` URL,
/// with `***`. Used on text that comes from outside (child stderr, SDK errors).
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    needles: Vec<Secret>,
}

impl Redactor {
    /// Registers a secret in the forms it may appear in: raw and percent-encoded (as in a URL).
    pub fn add(&mut self, secret: &Secret) {
        let raw = secret.expose();
        // Very short values would redact innocent text everywhere; they are still hidden by the
        // URL rule below and never logged by us directly.
        if raw.len() < 4 {
            return;
        }
        for form in [raw.to_string(), crate::percent::encode_component(raw)] {
            if !self.needles.iter().any(|n| n.expose() == form) {
                self.needles.push(Secret::new(form));
            }
        }
        // Longest first, so a needle that contains another is replaced whole.
        self.needles
            .sort_by_key(|n| std::cmp::Reverse(n.expose().len()));
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = redact_urls(text);
        for n in &self.needles {
            if out.contains(n.expose()) {
                out = out.replace(n.expose(), "***");
            }
        }
        out
    }
}

/// Masks the password in every `scheme://user:password@` occurrence of `text`.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace, but a password may contain
        // any of those; the last '@' before whitespace is the end of the userinfo.
        let end_ws = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let candidate = &tail[..end_ws];
        match candidate.rfind('@') {
            Some(at) => {
                let userinfo = &candidate[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push('@');
                rest = &tail[at + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }

    #[test]
    fn urls_are_masked() {
        let cases = [
            ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
            (
                "x mongodb://a:b@h1,h2/?tls=true y",
                "x mongodb://a:***@h1,h2/?tls=true y",
            ),
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            ("no url here", "no url here"),
            ("s3://bucket/key", "s3://bucket/key"),
            ("postgresql://u:p@ss:w/rd@h/db", "postgresql://u:***@h/db"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_urls(input), want, "{input}");
        }
    }

    #[test]
    fn redactor_masks_raw_and_encoded_forms() {
        let mut r = Redactor::default();
        r.add(&Secret::new("p@ss:w/rd%#?&="));
        let text = "auth failed for p@ss:w/rd%#?&= and p%40ss%3Aw%2Frd%25%23%3F%26%3D";
        assert_eq!(r.redact(text), "auth failed for *** and ***");
    }
}
