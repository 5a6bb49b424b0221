//! Node names and reasons that are safe to hand to a scheduler: a node name is checked, never
//! repaired (a wrong name must not drain another node); a reason is folded into plain text.

/// Longest node name accepted (Kubernetes' DNS-subdomain limit; Slurm's is shorter in practice).
pub const MAX_NODE_NAME_LEN: usize = 253;
/// Longest reason handed on; the rest is cut.
pub const MAX_REASON_CHARS: usize = 200;

/// Why a node name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node name `{shown}` is not usable: {problem}")]
pub struct BadNodeName {
    pub shown: String,
    pub problem: String,
}

/// Checks a Slurm node name: one node (no hostlist expression such as `gpu[1-4]` or `a,b`), letters,
/// digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn slurm_node_name(name: &str) -> Result<&str, BadNodeName> {
    let name = check(name, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })?;
    // `scontrol update NodeName=ALL` means every node in the cluster.
    if name.eq_ignore_ascii_case("all") {
        return Err(bad(name, "Slurm reads it as every node"));
    }
    Ok(name)
}

/// Checks a Kubernetes node name: a DNS subdomain (lowercase letters, digits, `.`, `-`).
pub fn kubernetes_node_name(name: &str) -> Result<&str, BadNodeName> {
    let name = check(name, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')
    })?;
    if name.ends_with(['-', '.']) {
        return Err(bad(name, "must end with a letter or digit"));
    }
    Ok(name)
}

fn check(name: &str, allowed: impl Fn(char) -> bool) -> Result<&str, BadNodeName> {
    if name.is_empty() {
        return Err(bad(name, "it is empty"));
    }
    if name.len() > MAX_NODE_NAME_LEN {
        return Err(bad(
            name,
            &format!("longer than {MAX_NODE_NAME_LEN} characters"),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(bad(name, "must start with a letter or digit"));
    }
    if let Some(c) = name.chars().find(|c| !allowed(*c)) {
        return Err(bad(name, &format!("character {c:?} is not allowed")));
    }
    Ok(name)
}

fn bad(name: &str, problem: &str) -> BadNodeName {
    BadNodeName {
        shown: name
            .chars()
            .take(80)
            .flat_map(char::escape_default)
            .collect(),
        problem: problem.to_owned(),
    }
}

/// A reason as plain text a scheduler stores and shows: printable ASCII without quotes or `=`,
/// at most [`MAX_REASON_CHARS`]. It comes from the controller, so it is folded rather than
/// refused: a drain must not fail over the wording of its reason.
pub fn reason_text(reason: &str) -> String {
    let folded: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " -_.,:;/()#@+%[]".contains(c) {
                c
            } else if c.is_whitespace() || c.is_control() {
                ' '
            } else {
                '_'
            }
        })
        .take(MAX_REASON_CHARS)
        .collect();
    let words: Vec<&str> = folded.split_whitespace().collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slurm_names() {
        for ok in ["gpu01", "node-1.rack_2", "A1"] {
            assert_eq!(slurm_node_name(ok).unwrap(), ok);
        }
        for bad in [
            "", "gpu[1-4]", "a,b", "-x", "node 1", "n=1", "ALL", "gpu01\n", "$(id)", "all",
        ] {
            assert!(slurm_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kubernetes_names() {
        assert!(kubernetes_node_name("gpu-01.site").is_ok());
        for bad in ["Gpu01", "gpu_01", "gpu-", "", "a b"] {
            assert!(kubernetes_node_name(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn reasons_are_plain_and_bounded(s in ".{0,400}") {
            let r = reason_text(&s);
            prop_assert!(r.chars().count() <= MAX_REASON_CHARS);
            prop_assert!(r.chars().all(|c| c.is_ascii() && !c.is_ascii_control()));
            prop_assert!(!r.contains(['"', '\'', '=', '\\', '`', '$']));
        }

        #[test]
        fn accepted_slurm_names_are_one_plain_node(s in ".{0,40}") {
            if let Ok(n) = slurm_node_name(&s) {
                prop_assert!(!n.contains(['[', ']', ',', ' ', '=']));
                prop_assert!(!n.is_empty());
            }
        }
    }
}
