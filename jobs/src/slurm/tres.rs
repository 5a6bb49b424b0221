//! GPU counts in Slurm's TRES and GRES strings, in the spellings its versions print:
//! `gres:gpu:4` (22.05 `tres_per_node`), `gres/gpu:4` (23.02 on), `gres:gpu:a100:2` (typed),
//! `gres/gpu=4` (`tres_req_str`), `gpu:6(IDX:0-5)` (`gres_used`, `gres_detail`), several entries
//! separated by commas.

/// Why a TRES or GRES string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a GRES/TRES list Slurm prints: {problem}")]
pub struct BadTres {
    pub text: String,
    pub problem: String,
}

/// GPUs named in a TRES or GRES list (entries for other resources count nothing).
/// A `gpu` entry without a count means one GPU, as in `--gres=gpu`.
pub fn gpus(text: &str) -> Result<u64, BadTres> {
    let bad = |problem: &str| BadTres {
        text: text.chars().take(200).collect(),
        problem: problem.to_owned(),
    };
    let mut total: u64 = 0;
    for entry in split_entries(text) {
        let entry = entry.trim();
        if entry.is_empty() || entry.eq_ignore_ascii_case("n/a") || entry == "(null)" {
            continue;
        }
        // Drop an index suffix such as "(IDX:0-3)" or "(S:0)" (a type may be "(null)").
        let entry = match entry.rfind('(') {
            Some(i) if entry.ends_with(')') && i > 0 => &entry[..i],
            _ => entry,
        };
        let entry = entry
            .strip_prefix("gres:")
            .or_else(|| entry.strip_prefix("gres/"))
            .unwrap_or(entry);
        let (spec, count_after_eq) = match entry.split_once('=') {
            Some((spec, count)) => (spec, Some(count)),
            None => (entry, None),
        };
        let mut parts = spec.split(':');
        if parts.next() != Some("gpu") {
            continue;
        }
        let rest: Vec<&str> = parts.collect();
        let count_text = match (count_after_eq, rest.as_slice()) {
            (Some(c), _) => Some(c),
            (None, []) => None,
            // gpu:4 or gpu:a100 (a type without count is one GPU)
            (None, [one]) => parse_count(one).is_some().then_some(*one),
            (None, [_type, count]) => Some(*count),
            (None, _) => return Err(bad("a gpu entry has more than a type and a count")),
        };
        let count = match count_text {
            None => 1,
            Some(c) => parse_count(c).ok_or_else(|| bad("a gpu count is not a number"))?,
        };
        total = total
            .checked_add(count)
            .ok_or_else(|| bad("the gpu counts overflow"))?;
    }
    Ok(total)
}

/// Commas separate entries except inside parentheses (`gpu:2(IDX:0,2)`).
fn split_entries(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth <= 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// A count with Slurm's optional multiplier suffix (`1k` = 1024).
fn parse_count(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, mult) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 1024u64),
        Some((i, 'm' | 'M')) => (&text[..i], 1024 * 1024),
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spellings_slurm_prints() {
        let cases = [
            ("gres:gpu:4", 4),
            ("gres/gpu:4", 4),
            ("gres:gpu:a100:2", 2),
            ("gres:gpu", 1),
            ("gres/gpu:h100", 1),
            ("cpu=2,mem=1000M,node=1,billing=2,gres/gpu=4", 4),
            ("cpu=2,gres/gpu:a100=2,gres/gpu=2", 4),
            ("gpu:6", 6),
            ("gpu:6(IDX:0-5)", 6),
            ("gpu:a100:2(IDX:0-1),gpu:h100:1(IDX:2)", 3),
            ("gpu:2(IDX:0,2),nic:1", 2),
            ("gpu:(null):0(IDX:N/A)", 0),
            ("gres:nic:1", 0),
            ("", 0),
            ("N/A", 0),
            ("gres:gpu:1k", 1024),
        ];
        for (text, want) in cases {
            assert_eq!(gpus(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn malformed_counts_are_errors() {
        for text in [
            "gres:gpu:a100:x",
            "gres/gpu=four",
            "gpu:a:b:c",
            "gres/gpu=99999999999999999999",
        ] {
            assert!(gpus(text).is_err(), "{text}");
        }
    }

    proptest! {
        #[test]
        fn counts_add_up(counts in proptest::collection::vec(0u64..1000, 0..6), typed in any::<bool>()) {
            let text: Vec<String> = counts
                .iter()
                .map(|c| if typed { format!("gres/gpu:a100:{c}") } else { format!("gres/gpu:{c}") })
                .collect();
            prop_assert_eq!(gpus(&text.join(",")).unwrap(), counts.iter().sum::<u64>());
        }

        #[test]
        fn never_panics(text in ".{0,60}") {
            let _ = gpus(&text);
        }
    }
}
