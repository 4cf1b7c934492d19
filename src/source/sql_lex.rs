//! Just enough SQL lexing to read what pg_dump and pg_dumpall write: split a script into
//! statements and a statement into words, quoted identifiers and strings. Not a parser: the
//! input is always machine-written by PostgreSQL's own tools, one statement per `;`.

/// One lexical token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An unquoted word (keyword or identifier), as written.
    Word(String),
    /// A `"quoted identifier"`, unescaped.
    Ident(String),
    /// A string or dollar-quoted literal (contents are never needed).
    Literal,
    /// Any other character: `(`, `)`, `,`, `.`, `;`, operators.
    Punct(char),
}

impl Token {
    /// Whether this is the unquoted keyword `kw` (case-insensitive).
    pub fn is(&self, kw: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    /// The object name this token spells, if it is a name: quoted identifiers as written,
    /// unquoted ones as PostgreSQL folds them (pg_dump quotes anything that needs it).
    pub fn name(&self) -> Option<String> {
        match self {
            Token::Word(w) => Some(w.to_lowercase()),
            Token::Ident(i) => Some(i.clone()),
            _ => None,
        }
    }
}

/// Splits `script` into statements (each ending at a top-level `;`, which is kept), skipping
/// `--` comments and psql meta-command lines (`\restrict`, `\connect`).
pub fn statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let b = script.as_bytes();
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        let c = b[i] as char;
        if line_start && cur.trim().is_empty() && c == '\\' {
            // A meta-command runs to the end of its line.
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        line_start = c == '\n';
        match c {
            '-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            '\'' | '"' => {
                let end = quoted_end(b, i, b[i]);
                cur.push_str(&script[i..end]);
                i = end;
                continue;
            }
            '$' => {
                if let Some(end) = dollar_end(script, i) {
                    cur.push_str(&script[i..end]);
                    i = end;
                    continue;
                }
            }
            ';' => {
                cur.push(';');
                let s = cur.trim().to_string();
                if s != ";" {
                    out.push(s);
                }
                cur.clear();
                i += 1;
                continue;
            }
            _ => {}
        }
        let ch = script[i..].chars().next().expect("in bounds");
        cur.push(ch);
        i += ch.len_utf8();
    }
    let rest = cur.trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// Index just past the quote closing the one at `start` (`''` / `""` are escapes).
fn quoted_end(b: &[u8], start: usize, q: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// For `$tag$ ... $tag$` starting at `start`, the index just past the closing tag.
fn dollar_end(s: &str, start: usize) -> Option<usize> {
    let rest = &s[start + 1..];
    let tag_len = rest.find('$')?;
    let tag = &rest[..tag_len];
    if !tag.chars().all(|c| c.is_alphanumeric() || c == '_') || tag.starts_with(char::is_numeric) {
        return None;
    }
    let delim = format!("${tag}$");
    let body = start + delim.len();
    let close = s[body..].find(&delim)?;
    Some(body + close + delim.len())
}

/// Tokens of one statement.
pub fn tokens(stmt: &str) -> Vec<Token> {
    let b = stmt.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' {
            let end = quoted_end(b, i, b'"');
            let inner = &stmt[i + 1..end.saturating_sub(1).max(i + 1)];
            out.push(Token::Ident(inner.replace("\"\"", "\"")));
            i = end;
        } else if c == b'\'' {
            i = quoted_end(b, i, b'\'');
            out.push(Token::Literal);
        } else if c == b'$' && dollar_end(stmt, i).is_some() {
            i = dollar_end(stmt, i).expect("checked");
            out.push(Token::Literal);
        } else if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            // E'...' and similar prefixed strings: the prefix is not a word.
            if b.get(i) == Some(&b'\'') && i - start == 1 {
                continue;
            }
            out.push(Token::Word(stmt[start..i].to_string()));
        } else {
            out.push(Token::Punct(c as char));
            i += 1;
        }
    }
    out
}

/// Quotes `name` as an SQL string literal.
pub fn literal(name: &str) -> String {
    format!("'{}'", name.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_keeping_quoted_semicolons() {
        let s = "-- c;\n\\restrict abc\nSET a = 'x;y';\nCREATE ROLE \"a;b\";\nCOMMENT ON ROLE r IS $q$semi;colon$q$;\n\\unrestrict abc\n";
        assert_eq!(
            statements(s),
            vec![
                "SET a = 'x;y';",
                "CREATE ROLE \"a;b\";",
                "COMMENT ON ROLE r IS $q$semi;colon$q$;"
            ]
        );
    }

    #[test]
    fn tokens_unescape_identifiers() {
        let t = tokens("GRANT SELECT(id) ON TABLE app.t TO \"Report \"\"Owner\"\"\", bob;");
        assert!(t[0].is("grant"));
        assert!(t.contains(&Token::Ident("Report \"Owner\"".into())));
        assert_eq!(t[t.len() - 2].name().as_deref(), Some("bob"));
        assert_eq!(tokens("x = E'a'")[2], Token::Literal);
    }

    #[test]
    fn quoting() {
        assert_eq!(literal("o'k"), "'o''k'");
    }
}
