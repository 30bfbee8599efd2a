//! The replay engine as the timeline drives it: the few operations that seeking,
//! stepping and reverse searches need from a replayed machine, so that the
//! timeline can be tested against a scripted fake as well as run on KVM.
//!
//! **Positions.** An engine stands at a point of one deterministic history. The
//! points it can report itself are counted in exits: [`ReplayEngine::exits`] is the
//! number of exits served so far, and "the start of interval `e`" is the point
//! right after exit `e` was served, its instruction completed and the events the
//! log places at it applied (interval 0 starts at boot). Single steps from an
//! interval's start are counted by the caller, not by the engine.
//!
//! **Determinism.** Restoring a captured state (with the memory that went with it)
//! and resuming with the same arguments must give the same stops at the same
//! states: the timeline finds points again by replaying to them, and names points
//! whose step count it does not know by their state (registers and the memory
//! written since boot).
//!
//! **Checkpoints** are split between the engine and the caller: the engine
//! captures and restores everything but guest memory ([`ReplayEngine::MachineState`]),
//! the caller keeps guest memory, incrementally, from the pages the engine reports
//! as written ([`ReplayEngine::take_dirty_since_mark`]).

use super::access::{self, Access};
use super::watch::{PhysicalWatch, WatchHit};
use super::{EngineStop, MachineState, ReplayError, Replayer};
use crate::digest::RegisterArray;
use crate::vmm::debug::HwBreakpoint;
use crate::vmm::paging;
use std::fmt;

#[cfg(test)]
pub(crate) mod fake;

/// What the timeline needs from a replayed machine.
pub trait ReplayEngine {
    /// A captured machine state without guest memory: registers, devices, the
    /// position in the log (exits served, events applied) and the pages written
    /// since boot.
    type MachineState: Clone + fmt::Debug;

    /// Runs forward until the first of: one instruction done (`single_step`), an
    /// execution breakpoint of `stops` (stopping before its instruction), the
    /// start of interval `stop_at_exit`, the guest's end, or `interrupted()`
    /// saying stop.
    ///
    /// Contracts the timeline relies on:
    /// - a breakpoint at the starting position never stops the run (it is where the
    ///   caller stands, so it was already reported or deliberately passed);
    /// - while single-stepping, breakpoints are not checked;
    /// - a single step whose instruction causes an exit ends at the start of the
    ///   next interval ([`EngineStop::Stepped`], or [`EngineStop::Boundary`] /
    ///   [`EngineStop::Ended`] when that is the requested boundary or the end);
    /// - with `stop_at_exit` at or before the exits already served, nothing runs
    ///   and the answer is [`EngineStop::Boundary`];
    /// - once the guest ended, every call answers [`EngineStop::Ended`] and runs
    ///   nothing; the end is the start of the last interval;
    /// - `interrupted` is asked before the machine is entered, and again at least
    ///   after each exit the run goes on past.
    ///
    /// Only the first [`super::USER_HW_SLOTS`] entries of `stops` are honoured.
    fn resume(
        &mut self,
        single_step: bool,
        stops: &[HwBreakpoint],
        stop_at_exit: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<EngineStop, ReplayError>;

    /// Brings the machine to a clean instruction boundary and captures everything
    /// but guest memory; guest memory (as [`ReplayEngine::memory`] shows it after
    /// this call) completes the checkpoint.
    fn capture(&mut self) -> Result<Self::MachineState, ReplayError>;

    /// Restores a captured state. The caller has already put back, through
    /// [`ReplayEngine::memory_mut`], the guest memory captured with it. The pages
    /// written since the mark start again from none.
    fn restore(&mut self, state: &Self::MachineState) -> Result<(), ReplayError>;

    /// Exits served so far.
    fn exits(&self) -> u64;

    /// The exit of the recorded end (or of the last event of a truncated log).
    fn last_exit(&self) -> u64;

    /// The general-purpose registers, RIP and RFLAGS now.
    fn registers(&self) -> Result<RegisterArray, ReplayError>;

    /// Digest of the pages written since boot ([`crate::digest::dirty_pages`]): with the
    /// registers, what tells two points of one interval apart.
    fn memory_digest_since_boot(&mut self) -> Result<u64, ReplayError>;

    /// Guest memory, by guest-physical address.
    fn memory(&self) -> &[u8];

    /// Guest memory, writable: only for restoring checkpoints. Writes through it
    /// are not guest writes: they are not reported as written pages.
    fn memory_mut(&mut self) -> &mut [u8];

    /// Bitmap of the pages the guest wrote since the last call or the last
    /// [`ReplayEngine::restore`] (bit `i` is page `i`), starting a new accumulation.
    fn take_dirty_since_mark(&mut self) -> Result<Vec<u64>, ReplayError>;

    /// Bitmap of the pages that can be non-zero at boot (what the loader wrote).
    fn loader_pages(&self) -> Vec<u64>;

    /// Reads guest-virtual memory through the guest's page tables as they are now;
    /// `false` when a byte of it is not mapped.
    fn read_virtual(&self, address: u64, buffer: &mut [u8]) -> bool;

    /// The memory accesses of the instruction about to run (empty when it cannot
    /// be decoded): what read and access watchpoints are checked against where
    /// they cannot be trapped.
    fn accesses_at_rip(&self) -> Result<Vec<Access>, ReplayError>;

    /// Instructions that may have just written memory and left RIP where it is
    /// (see [`access::writer_candidates`]): where to look for the writer of a
    /// watched value, nearest first.
    fn writer_candidates(&self) -> Result<Vec<u64>, ReplayError>;

    /// The address of the instruction after the one about to run, if it can be
    /// decoded.
    fn next_instruction(&self) -> Result<Option<u64>, ReplayError>;

    /// The guest-physical address the guest's page tables map `address` to now.
    fn translate(&self, address: u64) -> Option<u64>;

    /// Traps `watches` (replacing those set before) for the calls to
    /// [`ReplayEngine::resume`] that follow. A run that is not single-stepping
    /// then stops with [`EngineStop::Watchpoint`] right after the instruction that
    /// hit one (after the whole of a `rep` string instruction); a single step
    /// ends as usual. Either way the hit is kept for
    /// [`ReplayEngine::take_watch_hit`] until the next `resume`. Returns `false`,
    /// trapping nothing, where the watches cannot be trapped (a watched page
    /// holds the guest's page tables).
    fn set_watches(&mut self, watches: &[PhysicalWatch]) -> Result<bool, ReplayError>;

    /// The watch hit of the last `resume`, if it made one.
    fn take_watch_hit(&mut self) -> Option<WatchHit>;
}

impl ReplayEngine for Replayer {
    type MachineState = MachineState;

    fn resume(
        &mut self,
        single_step: bool,
        stops: &[HwBreakpoint],
        stop_at_exit: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<EngineStop, ReplayError> {
        Replayer::resume(self, single_step, stops, stop_at_exit, interrupted)
    }

    fn capture(&mut self) -> Result<MachineState, ReplayError> {
        Replayer::capture(self)
    }

    fn restore(&mut self, state: &MachineState) -> Result<(), ReplayError> {
        Replayer::restore(self, state)
    }

    fn exits(&self) -> u64 {
        Replayer::exits(self)
    }

    fn last_exit(&self) -> u64 {
        Replayer::last_exit(self)
    }

    fn registers(&self) -> Result<RegisterArray, ReplayError> {
        self.registers_now()
    }

    fn memory_digest_since_boot(&mut self) -> Result<u64, ReplayError> {
        Replayer::memory_digest_since_boot(self)
    }

    fn memory(&self) -> &[u8] {
        self.vm().memory().as_slice()
    }

    fn memory_mut(&mut self) -> &mut [u8] {
        Replayer::memory_mut(self)
    }

    fn take_dirty_since_mark(&mut self) -> Result<Vec<u64>, ReplayError> {
        Replayer::take_dirty_since_mark(self)
    }

    fn loader_pages(&self) -> Vec<u64> {
        Replayer::loader_pages(self)
    }

    fn writer_candidates(&self) -> Result<Vec<u64>, ReplayError> {
        let (regs, sregs) = self.vcpu_registers()?;
        let written = self
            .last_hit_access()
            .map_or(u64::MAX, |access| access.address);
        Ok(access::writer_candidates(
            self.vm().memory(),
            &regs,
            &sregs,
            written,
        ))
    }

    fn next_instruction(&self) -> Result<Option<u64>, ReplayError> {
        Replayer::next_instruction(self)
    }

    fn translate(&self, address: u64) -> Option<u64> {
        let vm = self.vm();
        let sregs = vm.vcpu().get_sregs().ok()?;
        paging::translate(vm.memory(), &sregs, address)
    }

    fn set_watches(&mut self, watches: &[PhysicalWatch]) -> Result<bool, ReplayError> {
        Replayer::set_watches(self, watches)
    }

    fn take_watch_hit(&mut self) -> Option<WatchHit> {
        Replayer::take_watch_hit(self)
    }

    fn read_virtual(&self, address: u64, buffer: &mut [u8]) -> bool {
        let vm = self.vm();
        let Ok(sregs) = vm.vcpu().get_sregs() else {
            return false;
        };
        let mut done = 0;
        while done < buffer.len() {
            let virtual_address = address.wrapping_add(done as u64);
            let Some(physical) = paging::translate(vm.memory(), &sregs, virtual_address) else {
                return false;
            };
            // A read may straddle a page boundary, and the next page may map
            // anywhere.
            let in_page = (4096 - (virtual_address & 0xfff)) as usize;
            let chunk = in_page.min(buffer.len() - done);
            if vm
                .memory()
                .read(physical, &mut buffer[done..done + chunk])
                .is_err()
            {
                return false;
            }
            done += chunk;
        }
        true
    }

    fn accesses_at_rip(&self) -> Result<Vec<Access>, ReplayError> {
        let (regs, sregs) = self.vcpu_registers()?;
        Ok(access::at_rip(self.vm().memory(), &regs, &sregs))
    }
}
