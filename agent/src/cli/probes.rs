//! `--probes`: which groups of the probe registry are attached.

use crate::gobin::sites::ProbeGroup;

/// Which probe groups are attached (`--probes`).
// One flag per `--probes` group: a set, not a state machine.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeGroups {
    pub lifecycle: bool,
    pub park: bool,
    pub misuse: bool,
    /// The fatal paths: they fire only as a process dies.
    pub fatal: bool,
}

impl ProbeGroups {
    pub const ALL: Self = Self {
        lifecycle: true,
        park: true,
        misuse: true,
        fatal: true,
    };

    /// Whether the registry's `group` is chosen.
    pub fn has(self, group: ProbeGroup) -> bool {
        match group {
            ProbeGroup::Lifecycle => self.lifecycle,
            ProbeGroup::Park => self.park,
            ProbeGroup::Misuse => self.misuse,
            ProbeGroup::Fatal => self.fatal,
        }
    }

    /// The groups' names, for logs ("none" when empty).
    pub fn names(self) -> String {
        let names: Vec<&str> = [
            (self.lifecycle, "lifecycle"),
            (self.park, "park"),
            (self.misuse, "misuse"),
            (self.fatal, "fatal"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }
}

pub(super) fn parse_probes(s: &str) -> Result<ProbeGroups, String> {
    let mut groups = ProbeGroups {
        lifecycle: false,
        park: false,
        misuse: false,
        fatal: false,
    };
    match s.trim() {
        "all" => return Ok(ProbeGroups::ALL),
        "none" => return Ok(groups),
        _ => {}
    }
    for name in s.split(',').map(str::trim) {
        match name {
            "lifecycle" => groups.lifecycle = true,
            "park" => groups.park = true,
            "misuse" => groups.misuse = true,
            "fatal" => groups.fatal = true,
            _ => {
                return Err(format!(
                    "unknown probe group {name:?}: use lifecycle, park, misuse, fatal, all or none"
                ))
            }
        }
    }
    Ok(groups)
}
