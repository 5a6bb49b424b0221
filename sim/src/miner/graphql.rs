//! A small GraphQL reader for the emulators that serve `POST /graphql` (Braiins OS): it parses a
//! query document's selection set and projects it onto a JSON tree of what the firmware knows,
//! so any query shaped like the firmware's schema is answered without a hand-written reply per
//! query string.
//!
//! Supported: `query`/`mutation` operations (named or not, variable definitions skipped), fields
//! with aliases and arguments (string literals and `$variables`), nested selections, inline
//! fragments (`... on Type { … }`, whose type condition is not checked), `__typename`.
//! Not supported: named fragments and directives' effects. A field the tree does not have is a
//! GraphQL error, as a real server's validation would make it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Nesting deeper than this is refused (no schema in the emulators is half as deep).
const MAX_DEPTH: usize = 24;

/// What kind of operation a document holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OperationKind {
    Query,
    Mutation,
}

/// An argument's value as written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ArgValue {
    /// A string literal.
    Str(String),
    /// `$name`, resolved by the caller from the request's `variables`.
    Var(String),
    /// Anything else (numbers, enums, lists, objects), as text.
    Other(String),
}

/// One field in a selection set.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Field {
    pub name: String,
    pub alias: Option<String>,
    pub args: BTreeMap<String, ArgValue>,
    pub selection: Vec<Selection>,
}

/// A field, or an inline fragment's selections.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Selection {
    Field(Field),
    Inline(Vec<Selection>),
}

/// A parsed operation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Operation {
    pub kind: OperationKind,
    pub selection: Vec<Selection>,
}

impl Operation {
    /// The top-level field names, inline fragments flattened.
    pub fn roots(&self) -> Vec<&Field> {
        fn walk<'a>(sel: &'a [Selection], out: &mut Vec<&'a Field>) {
            for s in sel {
                match s {
                    Selection::Field(f) => out.push(f),
                    Selection::Inline(inner) => walk(inner, out),
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.selection, &mut out);
        out
    }
}

impl Field {
    /// The sub-field named `name`, inline fragments searched too.
    pub fn child(&self, name: &str) -> Option<&Field> {
        fn find<'a>(sel: &'a [Selection], name: &str) -> Option<&'a Field> {
            sel.iter().find_map(|s| match s {
                Selection::Field(f) if f.name == name => Some(f),
                Selection::Field(_) => None,
                Selection::Inline(inner) => find(inner, name),
            })
        }
        find(&self.selection, name)
    }

    /// An argument as a string: a literal, or the named variable's string value.
    pub fn arg_str(&self, name: &str, variables: &Value) -> Option<String> {
        match self.args.get(name)? {
            ArgValue::Str(s) => Some(s.clone()),
            ArgValue::Var(v) => variables.get(v)?.as_str().map(str::to_owned),
            ArgValue::Other(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Punct(char),
    Spread,
    Name(String),
    Str(String),
    Number(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() || c == ',' || c == '\u{feff}' => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '{' | '}' | '(' | ')' | ':' | '!' | '$' | '[' | ']' | '=' | '@' | '|' | '&' => {
                out.push(Token::Punct(c));
                i += 1;
            }
            '.' => {
                if chars.get(i + 1) == Some(&'.') && chars.get(i + 2) == Some(&'.') {
                    out.push(Token::Spread);
                    i += 3;
                } else {
                    return Err("unexpected `.`".into());
                }
            }
            '"' => {
                i += 1;
                let mut s = String::new();
                loop {
                    let Some(&ch) = chars.get(i) else {
                        return Err("unterminated string".into());
                    };
                    i += 1;
                    match ch {
                        '"' => break,
                        '\\' => {
                            let Some(&e) = chars.get(i) else {
                                return Err("unterminated string".into());
                            };
                            i += 1;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                other => other,
                            });
                        }
                        other => s.push(other),
                    }
                }
                out.push(Token::Str(s));
            }
            c if c == '-' || c.is_ascii_digit() => {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '+' | '-'))
                {
                    i += 1;
                }
                out.push(Token::Number(chars[start..i].iter().collect()));
            }
            c if c == '_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < chars.len() && (chars[i] == '_' || chars[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                out.push(Token::Name(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.i).cloned();
        self.i += 1;
        t
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Token::Punct(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn name(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Name(n)) => Ok(n),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    /// Skips a balanced `(…)`, `[…]` or `{…}` starting at the current opening token.
    fn skip_balanced(&mut self) -> Result<String, String> {
        let (open, close) = match self.next() {
            Some(Token::Punct('(')) => ('(', ')'),
            Some(Token::Punct('[')) => ('[', ']'),
            Some(Token::Punct('{')) => ('{', '}'),
            other => return Err(format!("expected a bracket, found {other:?}")),
        };
        let mut depth = 1;
        let mut text = String::from(open);
        while depth > 0 {
            match self.next() {
                None => return Err(format!("unclosed `{open}`")),
                Some(Token::Punct(c)) if c == open => depth += 1,
                Some(Token::Punct(c)) if c == close => depth -= 1,
                Some(Token::Name(n) | Token::Number(n) | Token::Str(n)) => text.push_str(&n),
                Some(_) => {}
            }
        }
        text.push(close);
        Ok(text)
    }

    fn skip_directives(&mut self) -> Result<(), String> {
        while self.eat('@') {
            self.name()?;
            if self.peek() == Some(&Token::Punct('(')) {
                self.skip_balanced()?;
            }
        }
        Ok(())
    }

    fn value(&mut self) -> Result<ArgValue, String> {
        match self.peek() {
            Some(Token::Punct('$')) => {
                self.i += 1;
                Ok(ArgValue::Var(self.name()?))
            }
            Some(Token::Str(_)) => match self.next() {
                Some(Token::Str(s)) => Ok(ArgValue::Str(s)),
                _ => Err("expected a string".into()),
            },
            Some(Token::Punct('[' | '{')) => Ok(ArgValue::Other(self.skip_balanced()?)),
            Some(Token::Name(_) | Token::Number(_)) => match self.next() {
                Some(Token::Name(n) | Token::Number(n)) => Ok(ArgValue::Other(n)),
                _ => Err("expected a value".into()),
            },
            other => Err(format!("expected a value, found {other:?}")),
        }
    }

    fn selection_set(&mut self, depth: usize) -> Result<Vec<Selection>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("selections nested more than {MAX_DEPTH} deep"));
        }
        if !self.eat('{') {
            return Err(format!("expected `{{`, found {:?}", self.peek()));
        }
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unclosed `{`".into()),
                Some(Token::Punct('}')) => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(Token::Spread) => {
                    self.i += 1;
                    match self.peek() {
                        Some(Token::Name(n)) if n == "on" => {
                            self.i += 1;
                            self.name()?;
                            self.skip_directives()?;
                            out.push(Selection::Inline(self.selection_set(depth + 1)?));
                        }
                        Some(Token::Punct('{' | '@')) => {
                            self.skip_directives()?;
                            out.push(Selection::Inline(self.selection_set(depth + 1)?));
                        }
                        other => {
                            return Err(format!("named fragments are not supported ({other:?})"));
                        }
                    }
                }
                Some(_) => out.push(Selection::Field(self.field(depth)?)),
            }
        }
    }

    fn field(&mut self, depth: usize) -> Result<Field, String> {
        let first = self.name()?;
        let (alias, name) = if self.eat(':') {
            (Some(first), self.name()?)
        } else {
            (None, first)
        };
        let mut args = BTreeMap::new();
        if self.eat('(') {
            while !self.eat(')') {
                let key = self.name()?;
                if !self.eat(':') {
                    return Err(format!("argument `{key}` has no value"));
                }
                args.insert(key, self.value()?);
            }
        }
        self.skip_directives()?;
        let selection = if self.peek() == Some(&Token::Punct('{')) {
            self.selection_set(depth + 1)?
        } else {
            Vec::new()
        };
        Ok(Field {
            name,
            alias,
            args,
            selection,
        })
    }

    fn operation(&mut self) -> Result<Operation, String> {
        let kind = match self.peek() {
            Some(Token::Punct('{')) => OperationKind::Query,
            Some(Token::Name(n)) if n == "query" => {
                self.i += 1;
                OperationKind::Query
            }
            Some(Token::Name(n)) if n == "mutation" => {
                self.i += 1;
                OperationKind::Mutation
            }
            other => return Err(format!("expected an operation, found {other:?}")),
        };
        if matches!(self.peek(), Some(Token::Name(_))) {
            self.i += 1; // operation name
        }
        if self.peek() == Some(&Token::Punct('(')) {
            self.skip_balanced()?; // variable definitions
        }
        self.skip_directives()?;
        let selection = self.selection_set(0)?;
        Ok(Operation { kind, selection })
    }
}

/// Parses a document holding one operation.
///
/// # Errors
/// A message saying what could not be read.
pub(crate) fn parse(text: &str) -> Result<Operation, String> {
    let mut p = Parser {
        toks: tokenize(text)?,
        i: 0,
    };
    let op = p.operation()?;
    if p.peek().is_some() {
        return Err("only one operation per document is supported".into());
    }
    Ok(op)
}

/// Projects `selection` onto `data`: the JSON a server would put under `"data"`.
///
/// # Errors
/// The first field `data` does not have, named as a GraphQL validation error would name it.
pub(crate) fn project(data: &Value, selection: &[Selection]) -> Result<Value, String> {
    let mut out = Map::new();
    project_into(data, selection, &mut out)?;
    Ok(Value::Object(out))
}

fn project_into(
    data: &Value,
    selection: &[Selection],
    out: &mut Map<String, Value>,
) -> Result<(), String> {
    for s in selection {
        match s {
            Selection::Inline(inner) => project_into(data, inner, out)?,
            Selection::Field(f) => {
                let key = f.alias.clone().unwrap_or_else(|| f.name.clone());
                let value = if f.name == "__typename" {
                    data.get("__typename").cloned().unwrap_or(Value::Null)
                } else {
                    let Some(v) = data.get(&f.name) else {
                        return Err(format!("Cannot query field \"{}\"", f.name));
                    };
                    shape(v, f)?
                };
                out.insert(key, value);
            }
        }
    }
    Ok(())
}

fn shape(v: &Value, f: &Field) -> Result<Value, String> {
    if f.selection.is_empty() {
        return Ok(v.clone());
    }
    match v {
        Value::Array(items) => items
            .iter()
            .map(|item| shape(item, f))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(_) => project(v, &f.selection),
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projects_the_queries_clients_send() {
        let data = json!({"bosminer": {"info": {"modelName": "Antminer S21", "x": 1}},
                          "events": {"appeals": [{"id": "1", "kind": "k", "message": "m"}]}});
        let op = parse("{ bosminer { info { modelName } } }").unwrap();
        assert_eq!(op.kind, OperationKind::Query);
        assert_eq!(
            project(&data, &op.selection).unwrap(),
            json!({"bosminer": {"info": {"modelName": "Antminer S21"}}})
        );
        let op = parse("query Q { events { appeals { id message } } }").unwrap();
        assert_eq!(
            project(&data, &op.selection).unwrap(),
            json!({"events": {"appeals": [{"id": "1", "message": "m"}]}})
        );
        let op = parse("{ m: bosminer { info { nope } } }").unwrap();
        assert!(project(&data, &op.selection).unwrap_err().contains("nope"));
    }

    #[test]
    fn reads_a_mutation_with_variables_and_inline_fragments() {
        let op = parse(
            "mutation ($username: String!, $password: String!) { auth { login(username: $username, \
             password: $password) { ... on VoidResult { void } } } }",
        )
        .unwrap();
        assert_eq!(op.kind, OperationKind::Mutation);
        let login = op.roots()[0].child("login").unwrap();
        let vars = json!({"username": "root", "password": "pw"});
        assert_eq!(login.arg_str("username", &vars).as_deref(), Some("root"));
        assert_eq!(login.arg_str("password", &vars).as_deref(), Some("pw"));
        assert!(login.child("void").is_some());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "",
            "{",
            "{ a(b) }",
            "query { ...Frag }",
            "{ a } { b }",
            "\"x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let deep = format!("{}{}", "{ a ".repeat(100), "}".repeat(100));
        assert!(parse(&deep).is_err());
    }
}
