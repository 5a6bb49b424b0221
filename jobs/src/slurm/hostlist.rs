//! Slurm hostlist expressions (`gpu[01-04,07],login1`, `rack[1-2]-gpu[1-8]`): whether a node is
//! named by one, without expanding it (a `[1-100000]` must not allocate a million names).

/// Why a hostlist could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hostlist `{list}` is malformed: {problem}")]
pub struct BadHostlist {
    pub list: String,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// Inclusive ranges; `width` is the zero-padded width of the range's lower bound.
    Ranges(Vec<(u64, u64, usize)>),
}

/// Whether `node` is one of the hosts `list` names. An empty list names none.
pub fn contains(list: &str, node: &str) -> Result<bool, BadHostlist> {
    for item in split_top_level(list).map_err(|p| bad(list, p))? {
        let segments = parse_item(item).map_err(|p| bad(list, p))?;
        if matches(&segments, node) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn bad(list: &str, problem: &str) -> BadHostlist {
    BadHostlist {
        list: list.chars().take(200).collect(),
        problem: problem.to_owned(),
    }
}

fn split_top_level(list: &str) -> Result<Vec<&str>, &'static str> {
    let mut items = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err("nested `[`"),
            ']' if depth == 1 => depth = 0,
            ']' => return Err("`]` without `[`"),
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("`[` without `]`");
    }
    items.push(&list[start..]);
    Ok(items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect())
}

fn parse_item(item: &str) -> Result<Vec<Segment>, &'static str> {
    let mut out = Vec::new();
    let mut rest = item;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or("`[` without `]`")?;
            out.push(Segment::Ranges(parse_ranges(&after[..end])?));
            rest = &after[end + 1..];
        } else {
            let end = rest.find('[').unwrap_or(rest.len());
            out.push(Segment::Literal(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
    Ok(out)
}

fn parse_ranges(inner: &str) -> Result<Vec<(u64, u64, usize)>, &'static str> {
    let mut out = Vec::new();
    for part in inner.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let number = |s: &str| -> Result<u64, &'static str> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err("a range bound is not a number");
            }
            s.parse::<u64>().map_err(|_| "a range bound is too large")
        };
        let (l, h) = (number(lo)?, number(hi)?);
        if l > h {
            return Err("a range ends before it starts");
        }
        out.push((l, h, lo.len()));
    }
    Ok(out)
}

fn matches(segments: &[Segment], name: &str) -> bool {
    match segments.split_first() {
        None => name.is_empty(),
        Some((Segment::Literal(l), rest)) => name
            .strip_prefix(l.as_str())
            .is_some_and(|tail| matches(rest, tail)),
        Some((Segment::Ranges(ranges), rest)) => {
            let digits = name.bytes().take_while(u8::is_ascii_digit).count();
            // Try every split of the digit run: `n[1-2]0` names n10 and n20.
            (1..=digits).any(|len| {
                let (num, tail) = name.split_at(len);
                num.parse::<u64>().is_ok_and(|v| {
                    ranges.iter().any(|&(lo, hi, width)| {
                        (lo..=hi).contains(&v) && format!("{v:0width$}") == num
                    })
                }) && matches(rest, tail)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_in_lists() {
        let yes = [
            ("pivot-node1", "pivot-node1"),
            ("gpu[01-04,07],login1", "gpu03"),
            ("gpu[01-04,07],login1", "gpu07"),
            ("gpu[01-04,07],login1", "login1"),
            ("rack[1-2]-gpu[1-8]", "rack2-gpu8"),
            ("n[1-10]", "n10"),
            ("n[1-2]0", "n20"),
        ];
        for (list, node) in yes {
            assert!(contains(list, node).unwrap(), "{list} {node}");
        }
        let no = [
            ("gpu[01-04]", "gpu1"),
            ("gpu[01-04]", "gpu05"),
            ("gpu[1-4]", "gpu01"),
            ("pivot-node1", "pivot-node10"),
            ("", "a"),
            ("rack[1-2]-gpu[1-8]", "rack3-gpu1"),
        ];
        for (list, node) in no {
            assert!(!contains(list, node).unwrap(), "{list} {node}");
        }
    }

    #[test]
    fn malformed_lists_are_errors() {
        for list in [
            "gpu[1-",
            "gpu1]",
            "gpu[a-b]",
            "gpu[4-1]",
            "gpu[[1]]",
            "g[99999999999999999999]",
        ] {
            assert!(contains(list, "gpu1").is_err(), "{list}");
        }
    }

    proptest! {
        #[test]
        fn a_range_names_exactly_its_members(lo in 0u64..500, len in 0u64..50, probe in 0u64..600, width in 1usize..4) {
            let hi = lo + len;
            let list = format!("gpu[{lo:0width$}-{hi:0width$}]");
            let node = format!("gpu{probe:0width$}");
            prop_assert_eq!(contains(&list, &node).unwrap(), (lo..=hi).contains(&probe));
        }

        #[test]
        fn never_panics(list in ".{0,40}", node in ".{0,20}") {
            let _ = contains(&list, &node);
        }
    }
}
