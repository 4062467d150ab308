//! Which processes to watch in whole-host mode: `--include` / `--exclude`
//! rules on the executable name, the Kubernetes namespace and pod labels.
//!
//! Rule syntax (`=` takes a glob with `*` and `?`, `~` a regular expression,
//! anchored by the user if wanted):
//!
//! ```text
//! api-*                 executable name (shorthand for exe=api-*)
//! exe~^(api|web)-       executable name, regex
//! namespace=kube-*      pod namespace
//! label:app=checkout    pod label
//! ```

use regex_lite::Regex;

use crate::k8s::PodMeta;

#[derive(Debug, Clone)]
enum Matcher {
    Glob(String),
    Regex(Regex),
}

impl Matcher {
    fn matches(&self, s: &str) -> bool {
        match self {
            Self::Glob(g) => glob(g.as_bytes(), s.as_bytes()),
            Self::Regex(r) => r.is_match(s),
        }
    }
}

#[derive(Debug, Clone)]
enum Subject {
    Exe,
    Namespace,
    Label(String),
}

/// One `--include` or `--exclude` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    subject: Subject,
    matcher: Matcher,
}

impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let split = s.find(['=', '~']);
        let (subject, op, pattern) = match split {
            Some(i) => (&s[..i], &s[i..=i], &s[i + 1..]),
            None => ("exe", "=", s),
        };
        let subject = match subject {
            "exe" => Subject::Exe,
            "namespace" => Subject::Namespace,
            _ => match subject.strip_prefix("label:") {
                Some(key) if !key.is_empty() => Subject::Label(key.to_string()),
                _ => {
                    return Err(format!(
                        "{s:?}: expected exe=, namespace= or label:KEY= (or ~ for a regex)"
                    ))
                }
            },
        };
        let matcher = if op == "~" {
            Matcher::Regex(Regex::new(pattern).map_err(|e| format!("{s:?}: {e}"))?)
        } else {
            Matcher::Glob(pattern.to_string())
        };
        Ok(Self { subject, matcher })
    }
}

/// What is known of a process's pod when the rules are applied.
#[derive(Debug, Clone, Copy)]
pub enum PodState<'a> {
    /// Not in a Kubernetes container (or no Kubernetes): pod rules never match.
    NotInPod,
    /// In a container whose pod is not in the cache yet.
    Pending,
    Known(&'a PodMeta),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Watch,
    Skip,
    /// Depends on pod metadata not yet known: ask again later.
    Pending,
}

impl Rule {
    /// `None` when the answer needs pod metadata that is pending.
    fn matches(&self, exe: &str, pod: PodState) -> Option<bool> {
        let meta = match (&self.subject, pod) {
            (Subject::Exe, _) => return Some(self.matcher.matches(exe)),
            (_, PodState::NotInPod) => return Some(false),
            (_, PodState::Pending) => return None,
            (_, PodState::Known(meta)) => meta,
        };
        Some(match &self.subject {
            Subject::Namespace => self.matcher.matches(&meta.namespace),
            Subject::Label(key) => meta
                .labels
                .iter()
                .any(|(k, v)| k == key && self.matcher.matches(v)),
            Subject::Exe => unreachable!("handled above"),
        })
    }

    fn needs_pod(&self) -> bool {
        !matches!(self.subject, Subject::Exe)
    }
}

/// The rules together: watched if some include matches (or there is none)
/// and no exclude does.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub include: Vec<Rule>,
    pub exclude: Vec<Rule>,
}

impl Selection {
    /// Decides from the executable name alone when no rule looks at pods.
    pub fn needs_pod(&self) -> bool {
        self.include
            .iter()
            .chain(&self.exclude)
            .any(Rule::needs_pod)
    }

    pub fn decide(&self, exe: &str, pod: PodState) -> Decision {
        let mut pending = false;
        for rule in &self.exclude {
            match rule.matches(exe, pod) {
                Some(true) => return Decision::Skip,
                None => pending = true,
                Some(false) => {}
            }
        }
        let included = if self.include.is_empty() {
            Some(true)
        } else {
            let results: Vec<_> = self.include.iter().map(|r| r.matches(exe, pod)).collect();
            if results.contains(&Some(true)) {
                Some(true)
            } else if results.contains(&None) {
                None
            } else {
                Some(false)
            }
        };
        match included {
            Some(false) => Decision::Skip,
            None => Decision::Pending,
            Some(true) if pending => Decision::Pending,
            Some(true) => Decision::Watch,
        }
    }
}

/// Glob match with `*` (any run) and `?` (any one byte), iterative with
/// single backtracking so hostile patterns stay linear-ish.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(v: &[&str]) -> Vec<Rule> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn meta(ns: &str, labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..PodMeta::default()
        }
    }

    #[test]
    fn globs() {
        assert!(glob(b"api-*", b"api-server"));
        assert!(glob(b"*-server", b"api-server"));
        assert!(glob(b"a?i*r", b"api-server"));
        assert!(!glob(b"api", b"api-server"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"*x*x*x*x*y", &[b'x'; 200]));
    }

    #[test]
    fn exe_rules_and_defaults() {
        let s = Selection::default();
        assert_eq!(s.decide("anything", PodState::NotInPod), Decision::Watch);
        let s = Selection {
            include: rules(&["spawner-*", "exe~^churn"]),
            exclude: rules(&["*-1.19"]),
        };
        assert_eq!(s.decide("spawner-1.24", PodState::Pending), Decision::Watch);
        assert_eq!(s.decide("churn-1.27", PodState::NotInPod), Decision::Watch);
        assert_eq!(s.decide("spawner-1.19", PodState::NotInPod), Decision::Skip);
        assert_eq!(s.decide("demo", PodState::NotInPod), Decision::Skip);
        assert!(!s.needs_pod());
    }

    #[test]
    fn pod_rules_wait_for_metadata() {
        let s = Selection {
            include: rules(&["namespace=shop"]),
            exclude: rules(&["label:gostray~^(off|no)$"]),
        };
        assert!(s.needs_pod());
        let shop = meta("shop", &[("app", "cart")]);
        let off = meta("shop", &[("gostray", "off")]);
        let other = meta("kube-system", &[]);
        assert_eq!(s.decide("x", PodState::Known(&shop)), Decision::Watch);
        assert_eq!(s.decide("x", PodState::Known(&off)), Decision::Skip);
        assert_eq!(s.decide("x", PodState::Known(&other)), Decision::Skip);
        assert_eq!(s.decide("x", PodState::Pending), Decision::Pending);
        assert_eq!(s.decide("x", PodState::NotInPod), Decision::Skip);
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!("pod=x".parse::<Rule>().is_err());
        assert!("label:=x".parse::<Rule>().is_err());
        assert!("exe~(".parse::<Rule>().is_err());
    }
}
