//! The target's memory as the heap walk reads it: in blocks, kept for the
//! length of one walk.

use std::collections::{HashMap, VecDeque};

use super::mem;
use crate::reach::{Memory, ReadError};

/// Bytes read at once around a small read, and blocks kept. The marker
/// reads object by object (most are a few dozen bytes, packed in 8 KiB
/// spans): one system call per object cost 12.7 s for a 256 MiB heap,
/// reading the block around it costs one per 64 KiB.
const BLOCK: u64 = 64 << 10;
const BLOCKS_KEPT: usize = 256;

/// The target's memory for the prover, read in blocks and kept for one
/// walk (16 MiB at most). A block that cannot be read whole (it crosses
/// into an unmapped page) is read exactly instead.
pub struct ProcMemory {
    pid: u32,
    blocks: HashMap<u64, Box<[u8]>>,
    order: VecDeque<u64>,
}

impl ProcMemory {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            blocks: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn block(&mut self, base: u64) -> Option<&[u8]> {
        if !self.blocks.contains_key(&base) {
            let mut b = vec![0u8; BLOCK as usize].into_boxed_slice();
            mem::read(self.pid, base, &mut b).ok()?;
            if self.order.len() >= BLOCKS_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.blocks.remove(&old);
                }
            }
            self.order.push_back(base);
            self.blocks.insert(base, b);
        }
        self.blocks.get(&base).map(|b| &b[..])
    }
}

impl Memory for ProcMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len() as u64;
        let base = addr & !(BLOCK - 1);
        let end = addr.checked_add(len).ok_or(ReadError)?;
        if len <= BLOCK / 2 && end <= base + BLOCK {
            if let Some(block) = self.block(base) {
                let at = (addr - base) as usize;
                buf.copy_from_slice(&block[at..at + buf.len()]);
                return Ok(());
            }
        }
        mem::read(self.pid, addr, buf).map_err(|_| ReadError)
    }
}
