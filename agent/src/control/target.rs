//! Everything the agent derives from one executable, shared by all its
//! processes, and naming PCs of one process.

use std::sync::Arc;

use crate::{
    gobin::leaklayout::LeakLayout,
    gobin::{Frame, GoBinary},
    proc::procfs::bounded_to,
    tracker::{Site, Symbols},
};

/// One analysed executable.
#[derive(Debug)]
pub struct Target {
    pub bin: Arc<GoBinary>,
    pub leak: Option<LeakLayout>,
}

impl Target {
    pub fn new(bin: Arc<GoBinary>) -> Self {
        let leak = Some(LeakLayout::from_bin(&bin));
        Self { bin, leak }
    }
}

/// Names PCs of one process: runtime addresses minus its load bias.
pub struct ProcSymbols {
    pub bin: Arc<GoBinary>,
    pub bias: u64,
}

/// Longest file path kept in a report.
const MAX_FILE_LEN: usize = 256;
/// Longest function name kept: Go allows identifiers of any length, and
/// generic instantiations spell out their type arguments.
const MAX_FUNCTION_LEN: usize = 256;

fn site_of(f: &Frame) -> Site {
    Site {
        function: bounded_to(&f.function, MAX_FUNCTION_LEN),
        file: bounded_to(&f.file, MAX_FILE_LEN),
        line: f.line,
    }
}

impl Symbols for ProcSymbols {
    fn site(&self, pc: u64) -> Option<Site> {
        self.bin
            .symbolize(pc.wrapping_sub(self.bias))
            .as_ref()
            .map(site_of)
    }

    fn frames(&self, pc: u64) -> Vec<Site> {
        self.bin
            .symbolize_inline(pc.wrapping_sub(self.bias))
            .iter()
            .map(site_of)
            .collect()
    }

    fn is_wrapper(&self, pc: u64) -> Option<bool> {
        Some(self.bin.is_wrapper(pc.wrapping_sub(self.bias)))
    }
}
