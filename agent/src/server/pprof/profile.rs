//! A count profile as the Go runtime writes its goroutine profiles: samples
//! of stacks, each with a count and string labels. Both encodings
//! (`proto.rs`, `text.rs`) read it through the same location table, so an
//! address means the same frame in either.

use std::collections::HashMap;

use crate::tracker::Site;

/// One stack and how many goroutines stand on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub count: u64,
    /// Innermost frame first, inlined calls as frames of their own.
    pub stack: Vec<Site>,
    /// Text labels (`pid`, `wait_reason`…), in the order they are written.
    pub labels: Vec<(&'static str, String)>,
}

/// A whole profile: `name` is its sample type (`name`/`count`), as in the
/// runtime's own count profiles (`goroutine`, `goroutineleak`).
#[derive(Debug, Clone, PartialEq)]
pub struct CountProfile {
    pub name: &'static str,
    pub samples: Vec<Sample>,
    /// The executable, when every sample comes from one (the mapping's
    /// file name, which `go tool pprof` prints as `File:`).
    pub binary: String,
    /// Free-text comments (`go tool pprof` prints them in the header).
    pub comments: Vec<String>,
    pub time_nanos: i64,
}

/// Every distinct frame of a profile, numbered from 1 in order of first
/// appearance, and each sample's stack as those numbers.
///
/// The agent names frames itself and keeps no PCs with them, so a frame's
/// number also serves as its address: the runtime's text format and pprof's
/// `Location.address` need one, and no tool symbolizes a profile whose
/// mapping says it already has functions, file names and lines.
pub struct Locations<'a> {
    pub frames: Vec<&'a Site>,
    pub stacks: Vec<Vec<u64>>,
}

impl<'a> Locations<'a> {
    pub fn of(profile: &'a CountProfile) -> Self {
        let mut ids: HashMap<&Site, u64> = HashMap::new();
        let mut frames = Vec::new();
        let stacks = profile
            .samples
            .iter()
            .map(|s| {
                s.stack
                    .iter()
                    .map(|site| {
                        *ids.entry(site).or_insert_with(|| {
                            frames.push(site);
                            frames.len() as u64
                        })
                    })
                    .collect()
            })
            .collect();
        Self { frames, stacks }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn site(function: &str, file: &str, line: u32) -> Site {
        Site {
            function: function.into(),
            file: file.into(),
            line,
        }
    }

    /// Two samples sharing their two outer frames, one with labels.
    pub fn example() -> CountProfile {
        let park = site("runtime.gopark", "/go/src/runtime/proc.go", 460);
        let exit = site("runtime.goexit", "/go/src/runtime/asm_amd64.s", 1700);
        CountProfile {
            name: "goroutineleak",
            samples: vec![
                Sample {
                    count: 10,
                    stack: vec![
                        park.clone(),
                        site("runtime.chansend1", "/go/src/runtime/chan.go", 161),
                        site("main.handle.func1", "/src/demo/main.go", 21),
                        exit.clone(),
                    ],
                    labels: vec![("pid", "4242".into()), ("wait_reason", "chan send".into())],
                },
                Sample {
                    count: 1,
                    stack: vec![park, site("main.worker", "/src/demo/main.go", 40), exit],
                    labels: vec![],
                },
            ],
            binary: "demo".into(),
            comments: vec!["leaked goroutines".into()],
            time_nanos: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn frames_are_numbered_once_in_order() {
        let p = example();
        let l = Locations::of(&p);
        assert_eq!(l.frames.len(), 5);
        assert_eq!(l.stacks, vec![vec![1, 2, 3, 4], vec![1, 5, 4]]);
        assert_eq!(l.frames[4].function, "main.worker");
    }
}
