//! Tokens of ADQL: identifiers (regular and "delimited"), numbers (decimal, exponent,
//! hexadecimal), 'strings' (with '' escapes, adjacent literals joined), operators, and
//! `--` comments.

use crate::{Error, Result, Span};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A regular identifier or keyword (as written).
    Word(String),
    /// A delimited identifier (quotes removed, case kept).
    Quoted(String),
    /// An unsigned numeric literal as written.
    Number(String),
    /// A character string literal (quotes removed, escapes resolved).
    Str(String),
    /// Punctuation or an operator.
    Sym(&'static str),
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub span: Span,
}

const SYMBOLS: [&str; 22] = [
    "<>", "!=", "<=", ">=", "||", "(", ")", ",", ".", ";", "+", "-", "*", "/", "%", "=", "<", ">",
    "&", "|", "^", "~",
];

struct Cursor<'a> {
    chars: Vec<char>,
    pos: usize,
    line: u32,
    column: u32,
    _text: &'a str,
}

impl Cursor<'_> {
    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.pos + k).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn span(&self) -> Span {
        Span {
            line: self.line,
            column: self.column,
        }
    }

    /// Skips whitespace and comments; true if anything was skipped.
    fn skip_trivia(&mut self) -> bool {
        let start = self.pos;
        loop {
            match self.peek(0) {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('-') if self.peek(1) == Some('-') => {
                    while let Some(c) = self.bump() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                _ => break,
            }
        }
        self.pos > start
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits ADQL text into tokens.
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>> {
    let mut c = Cursor {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        column: 1,
        _text: text,
    };
    let mut out = Vec::new();
    loop {
        c.skip_trivia();
        let span = c.span();
        let Some(ch) = c.peek(0) else {
            out.push(Token {
                tok: Tok::Eof,
                span,
            });
            return Ok(out);
        };
        let tok = if is_ident_start(ch) {
            let mut s = String::new();
            while let Some(ch) = c.peek(0).filter(|ch| is_ident_char(*ch)) {
                s.push(ch);
                c.bump();
            }
            Tok::Word(s)
        } else if ch == '"' {
            c.bump();
            let mut s = String::new();
            loop {
                match c.bump() {
                    Some('"') if c.peek(0) == Some('"') => {
                        c.bump();
                        s.push('"');
                    }
                    Some('"') => break,
                    Some(ch) => s.push(ch),
                    None => {
                        return Err(syntax(
                            span,
                            "unterminated delimited identifier: missing closing \"",
                        ));
                    }
                }
            }
            if s.is_empty() {
                return Err(syntax(span, "empty delimited identifier \"\""));
            }
            Tok::Quoted(s)
        } else if ch == '\'' {
            let mut s = String::new();
            loop {
                // One literal; then, after whitespace or comments, another joins it.
                c.bump();
                loop {
                    match c.bump() {
                        Some('\'') if c.peek(0) == Some('\'') => {
                            c.bump();
                            s.push('\'');
                        }
                        Some('\'') => break,
                        Some(ch) => s.push(ch),
                        None => return Err(syntax(span, "unterminated string: missing closing '")),
                    }
                }
                let save = (c.pos, c.line, c.column);
                if c.skip_trivia() && c.peek(0) == Some('\'') {
                    continue;
                }
                (c.pos, c.line, c.column) = save;
                break;
            }
            Tok::Str(s)
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.peek(1).is_some_and(|d| d.is_ascii_digit()))
        {
            let mut s = String::new();
            if ch == '0' && matches!(c.peek(1), Some('x' | 'X')) {
                s.push(c.bump().unwrap());
                s.push(c.bump().unwrap());
                while let Some(d) = c.peek(0).filter(|d| d.is_ascii_hexdigit()) {
                    s.push(d);
                    c.bump();
                }
                if s.len() == 2 {
                    return Err(syntax(span, "hexadecimal literal '0x' has no digits"));
                }
            } else {
                while let Some(d) = c.peek(0).filter(|d| d.is_ascii_digit()) {
                    s.push(d);
                    c.bump();
                }
                if c.peek(0) == Some('.') {
                    s.push('.');
                    c.bump();
                    while let Some(d) = c.peek(0).filter(|d| d.is_ascii_digit()) {
                        s.push(d);
                        c.bump();
                    }
                }
                if matches!(c.peek(0), Some('e' | 'E'))
                    && (c.peek(1).is_some_and(|d| d.is_ascii_digit())
                        || (matches!(c.peek(1), Some('+' | '-'))
                            && c.peek(2).is_some_and(|d| d.is_ascii_digit())))
                {
                    s.push(c.bump().unwrap());
                    if matches!(c.peek(0), Some('+' | '-')) {
                        s.push(c.bump().unwrap());
                    }
                    while let Some(d) = c.peek(0).filter(|d| d.is_ascii_digit()) {
                        s.push(d);
                        c.bump();
                    }
                }
            }
            // "89x" is the number 89 followed by the word x (an alias), as in SQL.
            Tok::Number(s)
        } else {
            let rest: String = c.chars[c.pos..(c.pos + 2).min(c.chars.len())]
                .iter()
                .collect();
            let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) else {
                return Err(syntax(span, format!("unexpected character '{ch}'")));
            };
            for _ in 0..sym.chars().count() {
                c.bump();
            }
            Tok::Sym(sym)
        };
        out.push(Token { tok, span });
    }
}

fn syntax(span: Span, message: impl Into<String>) -> Error {
    Error::Syntax {
        span,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn basic_tokens() {
        assert_eq!(
            toks("SELECT \"My Col\", 'it''s' 'joined', 1.5e-3, .5, 0x1F -- c\n<= ||"),
            vec![
                Tok::Word("SELECT".into()),
                Tok::Quoted("My Col".into()),
                Tok::Sym(","),
                Tok::Str("it'sjoined".into()),
                Tok::Sym(","),
                Tok::Number("1.5e-3".into()),
                Tok::Sym(","),
                Tok::Number(".5".into()),
                Tok::Sym(","),
                Tok::Number("0x1F".into()),
                Tok::Sym("<="),
                Tok::Sym("||"),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn positions_and_errors() {
        let t = tokenize("select\n  x").unwrap();
        assert_eq!(t[1].span, Span { line: 2, column: 3 });
        assert!(tokenize("select 'abc").is_err());
        assert!(tokenize("select #").is_err());
        assert!(tokenize("select \"\"").is_err());
    }
}
