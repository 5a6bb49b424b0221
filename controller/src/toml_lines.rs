//! Line numbers for TOML documents: turns a dotted key (`schedule[0].start`) or a parser error's
//! byte offset into the line an operator opens the file at, so every refusal names line and key.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A parsed view of a document's spans; build it once per document.
pub struct TomlLines<'a> {
    text: &'a str,
    root: Option<Spanned<DeTable<'a>>>,
}

impl std::fmt::Debug for TomlLines<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TomlLines").finish_non_exhaustive()
    }
}

/// One step of a dotted key path.
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some(close) = rest.find(']') {
            if let Ok(i) = rest[1..close].parse() {
                out.push(Step::Index(i));
            }
            rest = &rest[close + 1..];
        }
    }
    out
}

impl<'a> TomlLines<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// The 1-based line holding byte `offset`.
    pub fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// The line of the key at a dotted path such as `schedule[1].start` (an array element: the
    /// line its table starts on). `None` when the document does not hold that key.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut table: &DeTable<'_> = root.get_ref();
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        let mut line = None;
        for step in steps(path) {
            match step {
                Step::Key(k) => {
                    if let Some(v) = value {
                        table = v.get_ref().as_table()?;
                    }
                    let (key, v) = table.get_key_value(k)?;
                    line = Some(self.line_at(key.span().start));
                    value = Some(v);
                }
                Step::Index(i) => {
                    let v = value?.get_ref().as_array()?.get(i)?;
                    line = Some(self.line_at(v.span().start));
                    value = Some(v);
                }
            }
        }
        line
    }

    /// The dotted path of the innermost key at byte `offset` (the key itself or its value).
    pub fn key_at(&self, offset: usize) -> Option<String> {
        fn in_table(table: &DeTable<'_>, offset: usize, path: &str) -> Option<String> {
            for (k, v) in table.iter() {
                let here = if path.is_empty() {
                    k.get_ref().to_string()
                } else {
                    format!("{path}.{}", k.get_ref())
                };
                if k.span().contains(&offset) {
                    return Some(here);
                }
                if let Some(found) = in_value(v, offset, &here) {
                    return Some(found);
                }
            }
            None
        }
        // Table spans may cover only a header, so every table is searched, not just the one
        // whose span holds the offset.
        fn in_value(v: &Spanned<DeValue<'_>>, offset: usize, path: &str) -> Option<String> {
            match v.get_ref() {
                DeValue::Table(t) => in_table(t, offset, path),
                DeValue::Array(items) => items
                    .iter()
                    .enumerate()
                    .find_map(|(i, item)| in_value(item, offset, &format!("{path}[{i}]"))),
                _ => v.span().contains(&offset).then(|| path.to_owned()),
            }
            .or_else(|| {
                let leaf = !matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_));
                (!leaf && v.span().contains(&offset)).then(|| path.to_owned())
            })
        }
        in_table(self.root.as_ref()?.get_ref(), offset, "")
    }

    /// A parse or type error as "line N: key: message".
    pub fn describe(&self, e: &toml::de::Error) -> String {
        let message = e.message().trim_end().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let line = self.line_at(span.start);
                match self.key_at(span.start) {
                    Some(key) => format!("line {line}: {key}: {message}"),
                    None => format!("line {line}: {message}"),
                }
            }
            None => message,
        }
    }

    /// A checked problem at `key`, with its line when the document holds the key.
    pub fn at_key(&self, key: &str, problem: impl std::fmt::Display) -> String {
        match self.line_of(key) {
            Some(line) => format!("line {line}: {key}: {problem}"),
            None => format!("{key}: {problem}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name = \"x\"\n[economic]\nfloor = 3\n\n[[schedule]]\nname = \"a\"\n[[schedule]]\nname = \"b\"\nstart = \"25:00\"\n";

    #[test]
    fn keys_and_offsets_map_to_lines() {
        let l = TomlLines::new(DOC);
        assert_eq!(l.line_of("name"), Some(1));
        assert_eq!(l.line_of("economic.floor"), Some(3));
        assert_eq!(l.line_of("schedule[1].start"), Some(9));
        assert_eq!(l.line_of("schedule[0].name"), Some(6));
        assert_eq!(l.line_of("schedule[2].name"), None);
        assert_eq!(l.line_of("economic.nothing"), None);
        let offset = DOC.find("25:00").unwrap_or_default();
        assert_eq!(l.line_at(offset), 9);
        assert_eq!(l.key_at(offset).as_deref(), Some("schedule[1].start"));
    }
}
