//! Everything the agent derives from one executable, shared by all its
//! processes, and naming PCs of one process.

use std::{path::Path, sync::Arc};

use crate::{
    gobin::{GoBinError, GoBinary},
    leakbin::{FunctionTable, LeakLayout},
    tracker::{verdict::Site, Symbols},
};

/// One analysed executable.
#[derive(Debug)]
pub struct Target {
    pub bin: GoBinary,
    /// Absent when the binary lacks what the leak probes need; the lifecycle
    /// probes still work then.
    pub leak: Option<LeakLayout>,
}

impl Target {
    /// Reads the executable once and analyses it.
    pub fn open(path: &Path) -> Result<Self, GoBinError> {
        let data = std::fs::read(path).map_err(|source| GoBinError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let bin = GoBinary::parse(&data)?;
        let leak = match LeakLayout::parse(&data, &bin) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "leak probes unavailable for this binary");
                None
            }
        };
        Ok(Self { bin, leak })
    }
}

/// Names PCs of one process: runtime addresses minus its load bias.
pub struct ProcSymbols {
    pub functions: Arc<FunctionTable>,
    pub bias: u64,
}

impl Symbols for ProcSymbols {
    fn site(&self, pc: u64) -> Option<Site> {
        let name = self.functions.name(pc.wrapping_sub(self.bias))?;
        Some(Site {
            function: name.to_string(),
            file: String::new(),
            line: 0,
        })
    }
}
