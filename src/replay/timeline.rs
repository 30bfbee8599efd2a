//! The replay timeline (docs/design.md, "The timeline"; after rr's
//! `ReplayTimeline`): one replay session, its checkpoints, and the operations a
//! debugger needs — seek, step, continue, and their reverse.
//!
//! **Moments.** A point of the history is named by the exit it follows and, within
//! that exit's interval, either the number of single steps from the interval's
//! start (`steps`, when known) or the state there (`landmark`: rip, register and
//! memory digests; equal state means equal future, so a landmark names one point
//! of an interval). Moments reached by single-stepping know their steps; moments
//! where a breakpoint stopped a free run know only their landmark, and learn their
//! steps when a reverse step needs them.
//!
//! **Checkpoints** are full machine states at interval starts (after an exit,
//! its instruction completed), plus fine ones taken every [`FINE_STEPS`] steps
//! while single-stepping. Guest memory lives in the `snapshots` crate's in-memory
//! store, incremental against the state the memory was last restored to or
//! captured at; interval checkpoints are thinned rr-style so that their number
//! grows like the log of the history length.
//!
//! **Reverse continue** from X: restore the latest checkpoint before X, run forward
//! to X noting breakpoint and watchpoint hits, and seek to the last one; with no
//! hit, repeat from the checkpoint before; at the first checkpoint, stop at the
//! beginning of history. **Reverse step** from X: seek to the moment one step
//! before. Debugger state (breakpoints, watchpoints) is passed with every call and
//! never stored in checkpoints.
//!
//! **Engine.** Everything the timeline learns of the machine (registers, memory,
//! exits, stops) comes through [`ReplayEngine`]: the KVM [`Replayer`] in use, a
//! scripted fake in the tests, which check these operations without `/dev/kvm`.

use super::engine::ReplayEngine;
use super::watch::{PhysicalWatch, Piece, WatchHit, WatchOn};
use super::{EngineStop, ReplayError, Replayer, USER_HW_SLOTS};
use crate::digest;
use crate::vmm::debug::{HwBreakpoint, HwCondition};
use snapshots::{
    Compression, DirtyPages, MemoryState, MemoryStore, SnapshotId, SnapshotSink, SnapshotSource,
    ThinningPolicy,
};
use std::fmt;

/// Why a timeline operation could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// Going to a point, the replay stopped before the exit it starts from.
    #[error("seeking {target} stopped early ({stop:?})")]
    SeekStoppedEarly {
        /// Where the seek was going.
        target: ExecutionPoint,
        /// What stopped it.
        stop: TimelineStop,
    },
    /// A point past the last instruction of its interval (or after the end).
    #[error("{target} is not in the history: {}", match last_step {
        Some(last) => format!("the interval after exit {} has steps 0 to {last}", target.exit),
        None => format!("nothing runs after exit {}, the end", target.exit),
    })]
    PastItsInterval {
        /// The point asked for.
        target: ExecutionPoint,
        /// The last step of the interval; `None` after the end.
        last_step: Option<u64>,
    },
    /// An instruction did not run that often in an interval.
    #[error("the instruction at {pc:#x} runs {seen} times after exit {exit}, not {occurrence}")]
    NoSuchOccurrence {
        /// The interval.
        exit: u64,
        /// The instruction.
        pc: u64,
        /// Which time was asked for (from 1).
        occurrence: u64,
        /// How many times it ran before the interval ended.
        seen: u64,
    },
    /// A point known by its state alone was not found in its interval.
    #[error("the point {target} is not in its interval")]
    NotInItsInterval {
        /// The point looked for.
        target: ExecutionPoint,
    },
    /// Replaying an interval again did not hit the breakpoint it hit before.
    #[error("the breakpoint hit at {target} did not happen again ({stop:?})")]
    HitNotRepeated {
        /// Where it was hit.
        target: ExecutionPoint,
        /// What the replay did instead.
        stop: EngineStop,
    },
    /// An exit ordinal past the recorded end.
    #[error("exit {exit} is past the end of the recording (exit {last})")]
    PastTheEnd {
        /// The exit asked for.
        exit: u64,
        /// The last recorded exit.
        last: u64,
    },
    /// No pinned checkpoint has this number.
    #[error("no checkpoint {number} (there are {count})")]
    NoCheckpoint {
        /// The number asked for.
        number: usize,
        /// Pinned checkpoints there are.
        count: usize,
    },
    /// The in-memory checkpoint store failed.
    #[error("the checkpoint store failed")]
    CheckpointStore(#[source] snapshots::SnapshotError),
    /// The scripted engine of the unit tests was asked for something its script
    /// does not hold.
    #[cfg(test)]
    #[error("fake engine: {0}")]
    Fake(String),
}

/// Interval checkpoints are taken at least every this many exits.
pub const CHECKPOINT_EXITS: u64 = 32;
/// While single-stepping, a fine checkpoint is taken every this many steps.
pub const FINE_STEPS: u64 = 256;

/// The machine state at a point, as far as telling points apart needs: a
/// fingerprint, not the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFingerprint {
    /// Instruction pointer.
    pub rip: u64,
    /// Digest of the general-purpose registers, RIP and RFLAGS.
    pub regs: u64,
    /// Digest of the pages written since boot.
    pub memory: u64,
}

/// How closely the machine matches a [`StateFingerprint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateMatch {
    /// Registers and memory.
    Full,
    /// Registers only.
    Registers,
    /// Not even the registers.
    None,
}

/// A point in the recorded execution: the one type for "where in the history"
/// that the timeline, the gdb stub (`monitor when`, `monitor goto EXIT:STEPS`) and
/// checkpoints share. `exit` is the exit ordinal of the last exit before the
/// point (exits count from 1; 0 is boot), `steps` the instructions executed since
/// it; `state` tells the point apart where the steps are not known (a point
/// reached by a breakpoint stop). The log's own positions (where an event is
/// applied: at an exit, or at a landmark between two) are
/// `trace::event::Position`; a branch-counter target is `clock::TickTarget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutionPoint {
    /// The last exit before the point.
    pub exit: u64,
    /// Single steps from the start of the interval, when known.
    pub steps: Option<u64>,
    /// The state at the point.
    pub state: StateFingerprint,
}

impl fmt::Display for ExecutionPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.steps {
            Some(steps) => write!(f, "{}:{}", self.exit, steps),
            None => write!(f, "{}:rip={:#x}", self.exit, self.state.rip),
        }
    }
}

/// A checkpoint: memory in the store, the rest as the engine captured it.
#[derive(Debug, Clone)]
struct Checkpoint<State> {
    memory: SnapshotId,
    machine: State,
    moment: ExecutionPoint,
    /// Made by `monitor checkpoint`: its number (they count up from 1 in the
    /// order they are made). Never thinned.
    pin: Option<usize>,
}

/// Which accesses a watchpoint catches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// A change of the value (gdb's `watch`).
    Write,
    /// A read (gdb's `rwatch`).
    Read,
    /// A read, a write or a change (gdb's `awatch`).
    Access,
    /// Any write, changing the value or not (`lore-dbg writes`).
    AnyWrite,
}

impl WatchKind {
    fn trapped_as(self) -> WatchOn {
        match self {
            Self::Write => WatchOn::Change,
            Self::Read => WatchOn::Read,
            Self::Access => WatchOn::Access,
            Self::AnyWrite => WatchOn::Write,
        }
    }
}

/// A watchpoint: `len` bytes at guest-virtual `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// First byte.
    pub address: u64,
    /// Bytes watched (gdb asks for 1, 2, 4 or 8).
    pub len: u64,
    /// What fires it.
    pub kind: WatchKind,
}

/// What should stop a run: breakpoints (instruction addresses, honoured with
/// hardware breakpoints) and watchpoints. The hosts we run on deliver no data
/// breakpoints (docs/design.md, "Host facts the code relies on"), so watchpoints
/// are memory traps ([`super::watch`]): the pages holding the watched bytes, as
/// the guest's page tables map them when an operation starts, exit on every write
/// (read and access watches: on every access). A write watchpoint fires when the
/// watched value changes (as gdb's do), read and access watchpoints when an
/// instruction reads (or writes) the watched bytes. A watch on an address that is
/// not mapped when the operation starts cannot be trapped: then, and only then,
/// the operation single-steps, comparing values and decoding each instruction's
/// accesses with iced-x86.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stops {
    /// Instruction addresses.
    pub breakpoints: Vec<u64>,
    /// Watched ranges.
    pub watches: Vec<Watch>,
}

impl Stops {
    fn hardware(&self) -> Vec<HwBreakpoint> {
        self.breakpoints
            .iter()
            .take(USER_HW_SLOTS)
            .map(|&address| HwBreakpoint {
                address,
                condition: HwCondition::Execute,
                len: 1,
            })
            .collect()
    }
}

/// A stop met while scanning forward: where, and the watch address for a
/// watchpoint (`None` for a breakpoint).
type Hit = (ExecutionPoint, Option<u64>);

/// What a timeline operation ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineStop {
    /// One instruction done (either direction).
    Stepped,
    /// At a breakpoint (before the instruction).
    Breakpoint {
        /// Its address.
        address: u64,
    },
    /// A watched value changed (forward: just after the write; backward: just
    /// before it).
    Watchpoint {
        /// The watch's address.
        address: u64,
    },
    /// At the first instruction of the history.
    HistoryBegin,
    /// At the guest's end.
    HistoryEnd {
        /// The recorded exit status.
        status: i32,
    },
    /// Interrupted by the caller.
    Interrupted,
}

/// The timeline of one replay, driving `E` (the KVM [`Replayer`] unless a test
/// gives another engine).
pub struct Timeline<E: ReplayEngine = Replayer> {
    engine: E,
    store: MemoryStore,
    checkpoints: Vec<Checkpoint<E::MachineState>>,
    /// The snapshot guest memory equalled when it was last captured or restored.
    memory_base: Option<SnapshotId>,
    /// Pages written since then (from KVM's dirty log).
    dirty_since_base: Vec<u64>,
    position: ExecutionPoint,
    thinning: ThinningPolicy,
    /// `monitor checkpoint`s made: the last number given.
    pins_made: usize,
    /// The current operation's watches are trapped by the engine (else, if there
    /// are any, it single-steps).
    watches_trapped: bool,
    /// The hit of the last watchpoint stop of a forward `continue`: which watch,
    /// its bytes before and after.
    last_watch_hit: Option<WatchHit>,
    /// The last point reached as an occurrence of an instruction, with its pc and
    /// occurrence: a name for it where its steps are not known.
    named_occurrence: Option<(ExecutionPoint, u64, u64)>,
}

impl<E: ReplayEngine> fmt::Debug for Timeline<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeline")
            .field("position", &self.position)
            .field("checkpoints", &self.checkpoints.len())
            .finish_non_exhaustive()
    }
}

fn or_bitmaps(into: &mut [u64], from: &[u64]) {
    for (word, new) in into.iter_mut().zip(from) {
        *word |= new;
    }
}

impl<E: ReplayEngine> Timeline<E> {
    /// Starts a timeline at the beginning of `engine`'s history.
    pub fn new(engine: E) -> Result<Self, ReplayError> {
        let memory_len = engine.memory().len();
        let store = MemoryStore::new(memory_len, Compression::None).map_err(snapshot_error)?;
        let words = memory_len.div_ceil(4096).div_ceil(64);
        let mut timeline = Self {
            engine,
            store,
            checkpoints: Vec::new(),
            memory_base: None,
            dirty_since_base: vec![0; words],
            position: ExecutionPoint {
                exit: 0,
                steps: Some(0),
                state: StateFingerprint {
                    rip: 0,
                    regs: 0,
                    memory: 0,
                },
            },
            thinning: ThinningPolicy {
                min_spacing: CHECKPOINT_EXITS,
                per_band: 4,
            },
            pins_made: 0,
            watches_trapped: false,
            last_watch_hit: None,
            named_occurrence: None,
        };
        timeline.position = timeline.current_moment(Some(0))?;
        timeline.checkpoint(None)?;
        Ok(timeline)
    }

    /// The engine (registers, memory, statistics).
    pub fn replayer(&self) -> &E {
        &self.engine
    }

    /// The watch hit the last forward `continue` stopped at: which watch, and
    /// its bytes before and after the instruction.
    pub fn take_last_watch_hit(&mut self) -> Option<WatchHit> {
        self.last_watch_hit.take()
    }

    /// Where the timeline stands.
    pub fn position(&self) -> ExecutionPoint {
        self.position
    }

    /// The exit of the recorded end.
    pub fn last_exit(&self) -> u64 {
        self.engine.last_exit()
    }

    fn state_digest(&mut self) -> Result<StateFingerprint, ReplayError> {
        let regs = self.engine.registers()?;
        let memory = self.engine.memory_digest_since_boot()?;
        Ok(StateFingerprint {
            rip: digest::rip(&regs),
            regs: digest::registers(&regs),
            memory,
        })
    }

    /// Whether the machine is in `state` now; the memory digest is computed only
    /// when the registers already match.
    fn matches_state(&mut self, state: &StateFingerprint) -> Result<bool, ReplayError> {
        Ok(self.compare_state(state)? == StateMatch::Full)
    }

    fn compare_state(&mut self, state: &StateFingerprint) -> Result<StateMatch, ReplayError> {
        let regs = self.engine.registers()?;
        if regs[16] != state.rip || digest::registers(&regs) != state.regs {
            return Ok(StateMatch::None);
        }
        if self.engine.memory_digest_since_boot()? == state.memory {
            Ok(StateMatch::Full)
        } else {
            Ok(StateMatch::Registers)
        }
    }

    fn current_moment(&mut self, steps: Option<u64>) -> Result<ExecutionPoint, ReplayError> {
        Ok(ExecutionPoint {
            exit: self.engine.exits(),
            steps,
            state: self.state_digest()?,
        })
    }

    /// Adds the pages written since the last look to those written since the base.
    fn collect_dirty(&mut self) -> Result<(), ReplayError> {
        let written = self.engine.take_dirty_since_mark()?;
        or_bitmaps(&mut self.dirty_since_base, &written);
        Ok(())
    }

    /// Takes a checkpoint at the current position; returns its index.
    fn checkpoint(&mut self, pin: Option<usize>) -> Result<usize, ReplayError> {
        let machine = self.engine.capture()?;
        self.collect_dirty()?;
        // The first checkpoint is at boot: only the loader's pages can be non-zero.
        let boot_pages = digest::union(&self.engine.loader_pages(), &self.dirty_since_base);
        let state = match self.memory_base {
            Some(snapshot) => MemoryState::At {
                snapshot,
                dirty: DirtyPages::Bitmap(&self.dirty_since_base),
            },
            None if self.checkpoints.is_empty() => {
                MemoryState::ZeroExcept(DirtyPages::Bitmap(&boot_pages))
            }
            None => MemoryState::Unknown,
        };
        let memory = self
            .store
            .take(self.engine.memory(), state, self.position.exit, &[])
            .map_err(snapshot_error)?;
        self.memory_base = Some(memory);
        self.dirty_since_base.iter_mut().for_each(|word| *word = 0);
        let checkpoint = Checkpoint {
            memory,
            machine,
            moment: self.position,
            pin,
        };
        let index = self
            .checkpoints
            .iter()
            .position(|existing| before(&checkpoint.moment, &existing.moment))
            .unwrap_or(self.checkpoints.len());
        self.checkpoints.insert(index, checkpoint);
        if pin.is_none() {
            self.thin()?;
        }
        Ok(self
            .checkpoints
            .iter()
            .position(|existing| existing.memory == memory)
            .unwrap_or(index))
    }

    /// Takes an automatic checkpoint at the current position (its steps known)
    /// unless one is there already: runs over known history again, after going
    /// back, would otherwise pile up copies that thinning keeps while each is the
    /// latest taken, and that shift checkpoint indices when it drops them.
    fn checkpoint_unless_known(&mut self) -> Result<(), ReplayError> {
        let here = self.position;
        if !self
            .checkpoints
            .iter()
            .any(|checkpoint| same_point(&checkpoint.moment, &here))
        {
            self.checkpoint(None)?;
        }
        Ok(())
    }

    /// Drops interval checkpoints rr-style; the first and pinned ones stay.
    fn thin(&mut self) -> Result<(), ReplayError> {
        let candidates: Vec<usize> = (1..self.checkpoints.len())
            .filter(|&index| self.checkpoints[index].pin.is_none())
            .collect();
        let positions: Vec<u64> = candidates
            .iter()
            .map(|&index| self.checkpoints[index].moment.exit)
            .collect();
        let drop: Vec<usize> = self
            .thinning
            .to_drop(&positions, self.position.exit)
            .into_iter()
            .filter_map(|slot| candidates.get(slot).copied())
            .collect();
        for &index in drop.iter().rev() {
            let checkpoint = self.checkpoints.remove(index);
            if Some(checkpoint.memory) == self.memory_base {
                // Keep the base: memory is described relative to it.
                self.checkpoints.insert(index, checkpoint);
                continue;
            }
            self.store
                .drop_snapshot(checkpoint.memory)
                .map_err(snapshot_error)?;
        }
        Ok(())
    }

    fn restore(&mut self, index: usize) -> Result<(), ReplayError> {
        let checkpoint = self.checkpoints[index].clone();
        self.collect_dirty()?;
        let state = match self.memory_base {
            Some(snapshot) => MemoryState::At {
                snapshot,
                dirty: DirtyPages::Bitmap(&self.dirty_since_base),
            },
            None => MemoryState::Unknown,
        };
        let memory = self.engine.memory_mut();
        let restored = self.store.restore(checkpoint.memory, memory, state);
        if let Err(error) = restored {
            self.memory_base = None;
            return Err(snapshot_error(error));
        }
        self.memory_base = Some(checkpoint.memory);
        self.dirty_since_base.iter_mut().for_each(|word| *word = 0);
        self.engine.restore(&checkpoint.machine)?;
        self.position = checkpoint.moment;
        Ok(())
    }

    /// Index of the latest checkpoint strictly before `moment` (by exit, then steps;
    /// a moment of unknown steps is after its interval's start).
    fn checkpoint_before(&self, moment: &ExecutionPoint) -> Option<usize> {
        self.checkpoints
            .iter()
            .rposition(|checkpoint| before(&checkpoint.moment, moment))
    }

    /// Runs forward to the start of interval `exit` (exit handled, instruction
    /// completed), taking interval checkpoints on the way.
    fn run_to_exit(
        &mut self,
        exit: u64,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<TimelineStop>, ReplayError> {
        while self.engine.exits() < exit {
            let next_checkpoint = (self.engine.exits() / CHECKPOINT_EXITS + 1) * CHECKPOINT_EXITS;
            let target = exit.min(next_checkpoint);
            match self.engine.resume(false, &[], Some(target), interrupted)? {
                EngineStop::Boundary => {
                    self.position = self.current_moment(Some(0))?;
                    if self.engine.exits() % CHECKPOINT_EXITS == 0 {
                        self.checkpoint_unless_known()?;
                    }
                }
                EngineStop::Ended { status } => {
                    // The end is the start of the last interval: nothing runs after it.
                    self.position = self.current_moment(Some(0))?;
                    if self.engine.exits() < exit {
                        return Ok(Some(TimelineStop::HistoryEnd { status }));
                    }
                }
                EngineStop::Interrupted => {
                    self.position = self.current_moment(None)?;
                    return Ok(Some(TimelineStop::Interrupted));
                }
                EngineStop::Breakpoint { .. }
                | EngineStop::Watchpoint { .. }
                | EngineStop::Stepped => {}
            }
        }
        Ok(None)
    }

    /// Moves to `moment`, which must be a point of the history.
    pub fn seek(&mut self, moment: &ExecutionPoint) -> Result<(), ReplayError> {
        if same_point(&self.position, moment) {
            return Ok(());
        }
        let mut never = || false;
        let start = self.checkpoint_before(moment).unwrap_or(0);
        let from_checkpoint = self.checkpoints[start].moment;
        // Going on from here beats restoring when here lies between the checkpoint
        // and the target.
        let here = self.position;
        let go_on = here.steps.is_some()
            && (before(&from_checkpoint, &here) || same_point(&from_checkpoint, &here))
            && before(&here, moment);
        if !go_on {
            self.restore(start)?;
        }
        if let Some(stop) = self.run_to_exit(moment.exit, &mut never)? {
            return Err(TimelineError::SeekStoppedEarly {
                target: *moment,
                stop,
            }
            .into());
        }
        match moment.steps {
            Some(target) => {
                let mut steps = self.position.steps.unwrap_or(0);
                while steps < target {
                    let stop = self.step_once(&[])?;
                    if self.engine.exits() != moment.exit
                        || matches!(stop, EngineStop::Ended { .. })
                    {
                        // Past the interval's last instruction: the next interval's
                        // start, or the end, is where the machine is.
                        self.position = self.current_moment(Some(0))?;
                        let last_step =
                            (!matches!(stop, EngineStop::Ended { .. })).then_some(steps);
                        return Err(TimelineError::PastItsInterval {
                            target: *moment,
                            last_step,
                        }
                        .into());
                    }
                    steps += 1;
                    self.position.steps = Some(steps);
                }
                self.position = self.current_moment(Some(target))?;
            }
            None => {
                // Find the point: single-step the interval, comparing states. The
                // registers decide; memory breaks ties. Memory alone may differ in dead
                // stack bytes with how the point was first reached: an interrupt
                // delivered right after a hardware-breakpoint stop pushes RFLAGS.RF
                // into its frame, one delivered during single steps does not.
                let start = self.position.steps.unwrap_or(0);
                let mut steps = start;
                let mut registers_only = None;
                loop {
                    match self.compare_state(&moment.state)? {
                        StateMatch::Full => {
                            self.position = ExecutionPoint {
                                exit: moment.exit,
                                steps: Some(steps),
                                state: moment.state,
                            };
                            return Ok(());
                        }
                        StateMatch::Registers if registers_only.is_none() => {
                            registers_only = Some(steps);
                        }
                        StateMatch::Registers | StateMatch::None => {}
                    }
                    if self.engine.exits() != moment.exit {
                        let Some(found) = registers_only else {
                            return Err(TimelineError::NotInItsInterval { target: *moment }.into());
                        };
                        tracing::debug!(%moment, steps = found, "point found by its registers alone");
                        return self.seek_steps(moment.exit, found);
                    }
                    self.step_once(&[])?;
                    steps += 1;
                }
            }
        }
        Ok(())
    }

    /// Traps the watches of `stops` for the operation that starts here (and
    /// removes traps no longer wanted); returns whether every watch could be
    /// trapped. A watch whose bytes are not all mapped now cannot be: then nothing
    /// is trapped and the caller single-steps.
    fn install_watches(&mut self, stops: &Stops) -> Result<bool, ReplayError> {
        let mut physical = Vec::with_capacity(stops.watches.len());
        for watch in &stops.watches {
            match self.physical_pieces(watch.address, watch.len.max(1)) {
                Some(pieces) => physical.push(PhysicalWatch {
                    pieces,
                    on: watch.kind.trapped_as(),
                }),
                None => {
                    tracing::info!(
                        address = format_args!("{:#x}", watch.address),
                        "the watched address is not mapped here: watching by single steps"
                    );
                    self.engine.set_watches(&[])?;
                    return Ok(false);
                }
            }
        }
        self.engine.set_watches(&physical)
    }

    /// The guest-physical bytes behind `len` guest-virtual bytes at `address`, a
    /// piece per page (merged where they are consecutive).
    fn physical_pieces(&self, address: u64, len: u64) -> Option<Vec<Piece>> {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut done = 0;
        while done < len {
            let virtual_address = address.checked_add(done)?;
            let physical = self.engine.translate(virtual_address)?;
            let in_page = crate::PAGE_SIZE - virtual_address % crate::PAGE_SIZE;
            let chunk = in_page.min(len - done);
            match pieces.last_mut() {
                Some(last) if last.address + last.len == physical => last.len += chunk,
                _ => pieces.push(Piece {
                    address: physical,
                    len: chunk,
                }),
            }
            done += chunk;
        }
        Some(pieces)
    }

    /// The current contents of the watched ranges (`None` where unmapped).
    fn watched_values(&self, watches: &[Watch]) -> Vec<Option<u64>> {
        watches
            .iter()
            .map(|watch| {
                let mut bytes = [0u8; 8];
                let len = watch.len.clamp(1, 8) as usize;
                self.engine
                    .read_virtual(watch.address, &mut bytes[..len])
                    .then(|| u64::from_le_bytes(bytes))
            })
            .collect()
    }

    /// Index of the first write or access watch whose value differs between
    /// `before` and `after`.
    fn changed_watch(
        watches: &[Watch],
        before: &[Option<u64>],
        after: &[Option<u64>],
    ) -> Option<usize> {
        before
            .iter()
            .zip(after)
            .zip(watches)
            .position(|((old, new), watch)| watch.kind != WatchKind::Read && old != new)
    }

    /// Index of the first read or access watch that the instruction about to run
    /// touches (reads it; for access watches, reads or writes it).
    fn decoded_watch_hit(&self, watches: &[Watch]) -> Result<Option<usize>, ReplayError> {
        if watches.iter().all(|watch| watch.kind == WatchKind::Write) {
            return Ok(None);
        }
        let accesses = self.engine.accesses_at_rip()?;
        Ok(watches.iter().position(|watch| {
            let end = watch.address.saturating_add(watch.len);
            accesses.iter().any(|access| {
                let overlaps = access.address < end
                    && watch.address < access.address.saturating_add(access.len);
                overlaps
                    && match watch.kind {
                        WatchKind::Write => false,
                        WatchKind::Read => access.read,
                        WatchKind::Access => access.read || access.write,
                        WatchKind::AnyWrite => access.write,
                    }
            })
        }))
    }

    /// The watch that one step from here fires: the engine's trap hit when the
    /// watches are trapped; else, given the values before it, a decoded
    /// read/access before the step, or a changed value after it.
    fn step_watching(
        &mut self,
        watches: &[Watch],
        values: &mut Vec<Option<u64>>,
    ) -> Result<(EngineStop, Option<usize>), ReplayError> {
        if self.watches_trapped {
            let stop = self.step_once(&[])?;
            let hit = self.engine.take_watch_hit().map(|hit| hit.index);
            return Ok((stop, hit));
        }
        let decoded = self.decoded_watch_hit(watches)?;
        let stop = self.step_once(&[])?;
        let now = self.watched_values(watches);
        let changed = Self::changed_watch(watches, values, &now);
        *values = now;
        Ok((stop, decoded.or(changed)))
    }

    /// One instruction forward; takes fine checkpoints while stepping.
    fn step_once(&mut self, stops: &[HwBreakpoint]) -> Result<EngineStop, ReplayError> {
        let exit_before = self.engine.exits();
        let stop = self.engine.resume(true, stops, None, &mut || false)?;
        let steps = if self.engine.exits() != exit_before {
            Some(0)
        } else {
            self.position.steps.map(|steps| steps + 1)
        };
        self.position = ExecutionPoint {
            exit: self.engine.exits(),
            steps,
            state: self.position.state,
        };
        if let Some(steps) = steps {
            if steps > 0 && steps % FINE_STEPS == 0 {
                self.position.state = self.state_digest()?;
                self.checkpoint_unless_known()?;
            }
        }
        Ok(stop)
    }

    /// The current position with its steps known (single-stepping its interval if
    /// needed).
    fn resolve_steps(&mut self) -> Result<ExecutionPoint, ReplayError> {
        if self.position.steps.is_some() {
            return Ok(self.position);
        }
        let target = self.position;
        let start = self
            .checkpoint_before(&ExecutionPoint {
                steps: None,
                ..target
            })
            .unwrap_or(0);
        self.restore(start)?;
        self.seek(&target)?;
        Ok(self.position)
    }

    /// `stepi`.
    pub fn step_forward(&mut self, stops: &Stops) -> Result<TimelineStop, ReplayError> {
        self.watches_trapped = self.install_watches(stops)?;
        let mut values = self.watched_values(&stops.watches);
        let (stop, hit) = self.step_watching(&stops.watches, &mut values)?;
        self.position.state = self.state_digest()?;
        if let EngineStop::Ended { status } = stop {
            self.position.steps = Some(0);
            return Ok(TimelineStop::HistoryEnd { status });
        }
        Ok(match hit {
            Some(index) => TimelineStop::Watchpoint {
                address: stops.watches[index].address,
            },
            None => TimelineStop::Stepped,
        })
    }

    /// `continue`.
    pub fn continue_forward(
        &mut self,
        stops: &Stops,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<TimelineStop, ReplayError> {
        self.watches_trapped = self.install_watches(stops)?;
        if !self.watches_trapped {
            return self.continue_stepping(stops, interrupted);
        }
        let watches = &stops.watches;
        let hardware = stops.hardware();
        let stops = hardware.as_slice();
        loop {
            let exit_before = self.engine.exits();
            let next_checkpoint = (exit_before / CHECKPOINT_EXITS + 1) * CHECKPOINT_EXITS;
            let stop = self
                .engine
                .resume(false, stops, Some(next_checkpoint), interrupted)?;
            match stop {
                EngineStop::Boundary => {
                    self.position = self.current_moment(Some(0))?;
                    self.checkpoint_unless_known()?;
                    // The run stopped here only to checkpoint; the next one starts
                    // here and so would pass a breakpoint here.
                    let rip = self.engine.registers()?[16];
                    if stops.iter().any(|stop| stop.address == rip) {
                        return Ok(TimelineStop::Breakpoint { address: rip });
                    }
                }
                EngineStop::Breakpoint { address } => {
                    self.position = self.current_moment(None)?;
                    return Ok(TimelineStop::Breakpoint { address });
                }
                EngineStop::Ended { status } => {
                    self.position = self.current_moment(Some(0))?;
                    return Ok(TimelineStop::HistoryEnd { status });
                }
                EngineStop::Watchpoint { watch } => {
                    self.position = self.current_moment(None)?;
                    self.last_watch_hit = self.engine.take_watch_hit();
                    return Ok(TimelineStop::Watchpoint {
                        address: watches[watch].address,
                    });
                }
                EngineStop::Interrupted => {
                    self.position = self.current_moment(None)?;
                    return Ok(TimelineStop::Interrupted);
                }
                EngineStop::Stepped => {}
            }
        }
    }

    /// `continue` with watchpoints: single steps, comparing the watched values.
    fn continue_stepping(
        &mut self,
        stops: &Stops,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<TimelineStop, ReplayError> {
        let mut values = self.watched_values(&stops.watches);
        let mut count: u64 = 0;
        loop {
            count += 1;
            if count % 1024 == 0 && interrupted() {
                self.position.state = self.state_digest()?;
                return Ok(TimelineStop::Interrupted);
            }
            let (stop, hit) = self.step_watching(&stops.watches, &mut values)?;
            if let EngineStop::Ended { status } = stop {
                self.position = self.current_moment(Some(0))?;
                return Ok(TimelineStop::HistoryEnd { status });
            }
            if let Some(index) = hit {
                self.position.state = self.state_digest()?;
                return Ok(TimelineStop::Watchpoint {
                    address: stops.watches[index].address,
                });
            }
            let rip = self.engine.registers()?[16];
            if stops.breakpoints.contains(&rip) {
                self.position.state = self.state_digest()?;
                return Ok(TimelineStop::Breakpoint { address: rip });
            }
        }
    }

    /// `reverse-stepi`.
    pub fn step_backward(&mut self) -> Result<TimelineStop, ReplayError> {
        let here = self.resolve_steps()?;
        let steps = here.steps.unwrap_or(0);
        if here.exit == 0 && steps == 0 {
            return Ok(TimelineStop::HistoryBegin);
        }
        if steps > 0 {
            self.seek_steps(here.exit, steps - 1)?;
            return Ok(TimelineStop::Stepped);
        }
        // The instruction before an interval's start is the one that caused its
        // exit: count the steps of the previous interval up to it.
        let previous = here.exit - 1;
        self.seek_steps(previous, 0)?;
        let mut count = 0;
        loop {
            self.step_once(&[])?;
            if self.engine.exits() != previous {
                break;
            }
            count += 1;
        }
        self.seek_steps(previous, count)?;
        Ok(TimelineStop::Stepped)
    }

    fn seek_steps(&mut self, exit: u64, steps: u64) -> Result<(), ReplayError> {
        let target = ExecutionPoint {
            exit,
            steps: Some(steps),
            state: self.position.state,
        };
        if !(self.position.exit == exit
            && self.position.steps.is_some_and(|current| current <= steps))
        {
            let start = self
                .checkpoint_before(&ExecutionPoint {
                    steps: Some(steps + 1),
                    ..target
                })
                .unwrap_or(0);
            self.restore(start)?;
        }
        self.seek(&target)
    }

    /// `reverse-continue`: the last breakpoint or watchpoint hit before the current
    /// position, or the beginning of history.
    pub fn continue_backward(
        &mut self,
        stops: &Stops,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<TimelineStop, ReplayError> {
        let target = self.resolve_steps()?;
        self.watches_trapped = self.install_watches(stops)?;
        let mut upper = target;
        loop {
            if interrupted() {
                return Ok(TimelineStop::Interrupted);
            }
            let Some(start) = self.checkpoint_before(&upper) else {
                self.restore(0)?;
                return Ok(TimelineStop::HistoryBegin);
            };
            self.restore(start)?;
            let start_moment = self.position;
            let Some(hits) = self.scan_hits(stops, &upper, interrupted)? else {
                return Ok(TimelineStop::Interrupted);
            };
            if let Some(last) = hits.last().copied() {
                self.seek_hit(stops, &last)?;
                return Ok(match last.1 {
                    Some(address) => {
                        // Backwards, a watchpoint stops before the write.
                        self.step_backward()?;
                        TimelineStop::Watchpoint { address }
                    }
                    None => TimelineStop::Breakpoint {
                        address: last.0.state.rip,
                    },
                });
            }
            if start_moment.exit == 0 && start_moment.steps == Some(0) {
                // Nothing between the beginning and the target: stop at the beginning.
                // Not `start`: checkpoints the scan took may have moved it (the
                // first one, at boot, never moves).
                self.restore(0)?;
                return Ok(TimelineStop::HistoryBegin);
            }
            upper = start_moment;
        }
    }

    /// Runs from the current position to `upper` (exclusive), returning every stop
    /// hit on the way: `(moment, Some(watch address))` for watchpoints; `None` when
    /// `interrupted` cut the scan short (the position is then where it stopped).
    ///
    /// The current position is a checkpoint strictly before `upper`, and the scan
    /// of the checkpoint before it ends just before it: a breakpoint here is this
    /// scan's to report, or no scan reports it.
    fn scan_hits(
        &mut self,
        stops: &Stops,
        upper: &ExecutionPoint,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<Vec<Hit>>, ReplayError> {
        let mut hits = Vec::new();
        let upper_steps = upper.steps.unwrap_or(0);
        if (stops.watches.is_empty() || self.watches_trapped) && self.engine.exits() < upper.exit {
            // Free runs with hardware breakpoints up to the upper moment's interval.
            // They pass a breakpoint where they start, and end at the upper
            // interval's start without looking at it: both points are checked by
            // rip, here and by the single steps below.
            let rip = self.engine.registers()?[16];
            if stops.breakpoints.contains(&rip) {
                let moment = self.current_moment(self.position.steps)?;
                hits.push((moment, None));
            }
            let hardware = stops.hardware();
            while self.engine.exits() < upper.exit {
                match self
                    .engine
                    .resume(false, &hardware, Some(upper.exit), interrupted)?
                {
                    EngineStop::Breakpoint { .. } => {
                        let moment = self.current_moment(None)?;
                        hits.push((moment, None));
                    }
                    EngineStop::Watchpoint { watch } => {
                        let moment = self.current_moment(None)?;
                        self.engine.take_watch_hit();
                        hits.push((moment, Some(stops.watches[watch].address)));
                    }
                    EngineStop::Boundary => {
                        self.position = self.current_moment(Some(0))?;
                    }
                    EngineStop::Ended { .. } => {
                        self.position = self.current_moment(Some(0))?;
                        return Ok(Some(hits));
                    }
                    EngineStop::Interrupted => {
                        self.position = self.current_moment(None)?;
                        return Ok(None);
                    }
                    EngineStop::Stepped => return Ok(Some(hits)),
                }
            }
        }
        // Single steps (the whole way with watchpoints, else within the upper
        // interval), checking breakpoints by rip and watches by value.
        let mut values = self.watched_values(&stops.watches);
        loop {
            let here = self.position;
            let reached = here.exit > upper.exit
                || (here.exit == upper.exit && here.steps.unwrap_or(0) >= upper_steps);
            if reached {
                break;
            }
            let rip = self.engine.registers()?[16];
            if stops.breakpoints.contains(&rip) {
                let moment = self.current_moment(here.steps)?;
                hits.push((moment, None));
            }
            let (stop, hit) = self.step_watching(&stops.watches, &mut values)?;
            if let EngineStop::Ended { .. } = stop {
                break;
            }
            if let Some(index) = hit {
                let moment = self.current_moment(self.position.steps)?;
                hits.push((moment, Some(stops.watches[index].address)));
            }
            if self.position.steps.is_some_and(|steps| steps % 1024 == 0) && interrupted() {
                self.position.state = self.state_digest()?;
                return Ok(None);
            }
        }
        Ok(Some(hits))
    }

    /// Seeks to a hit found by [`Timeline::scan_hits`].
    fn seek_hit(&mut self, stops: &Stops, hit: &Hit) -> Result<(), ReplayError> {
        let (moment, _) = hit;
        if moment.steps.is_some() {
            return self.seek(moment);
        }
        // Not the checkpoint the scan started from: the fine checkpoints it took
        // may have thinned that one away, or shifted its index. Any checkpoint at
        // or before the start of the hit's interval will do.
        let start = self
            .checkpoint_before(&ExecutionPoint {
                steps: None,
                ..*moment
            })
            .unwrap_or(0);
        self.restore(start)?;
        let stops = stops.hardware();
        let stops = stops.as_slice();
        let mut never = || false;
        while self.engine.exits() < moment.exit {
            self.engine
                .resume(false, &[], Some(moment.exit), &mut never)?;
        }
        loop {
            if self.matches_state(&moment.state)? {
                self.position = ExecutionPoint {
                    steps: None,
                    ..*moment
                };
                return Ok(());
            }
            match self
                .engine
                .resume(false, stops, Some(moment.exit + 1), &mut never)?
            {
                EngineStop::Breakpoint { .. } | EngineStop::Watchpoint { .. } => {}
                other => {
                    return Err(TimelineError::HitNotRepeated {
                        target: *moment,
                        stop: other,
                    }
                    .into())
                }
            }
        }
    }

    /// From the point right after an instruction that hit a watch (the current
    /// position), moves to the point right before it. Where the writer is one of
    /// the instructions that end at RIP ([`ReplayEngine::writer_candidates`]),
    /// it is found with breakpoints on them and returned as `(pc, occurrence)`:
    /// the position is then the `occurrence`-th time `pc` runs in the interval
    /// (see [`Timeline::goto_occurrence`]), reached without single-stepping the
    /// interval. Otherwise (a jump's target, a writer the decoder does not see)
    /// the interval is single-stepped and `None` returned.
    pub fn back_over_write(&mut self) -> Result<Option<(u64, u64)>, ReplayError> {
        let after = self.position;
        if after.steps.is_none() {
            let candidates: Vec<u64> = self
                .engine
                .writer_candidates()?
                .into_iter()
                .take(USER_HW_SLOTS)
                .collect();
            tracing::debug!(?candidates, %after, "looking for the writer");
            if !candidates.is_empty() {
                if let Some((pc, occurrence)) = self.find_writer(&after, &candidates)? {
                    self.find_occurrence(after.exit, pc, occurrence)?;
                    return Ok(Some((pc, occurrence)));
                }
                self.seek(&after)?;
            }
        }
        self.step_backward()?;
        Ok(None)
    }

    /// Runs the interval of `after` from its start with breakpoints on
    /// `candidates`, single-stepping each hit, until the step that ends in
    /// `after`'s state: that candidate and how many times it ran, or `None` when
    /// the state is reached otherwise.
    fn find_writer(
        &mut self,
        after: &ExecutionPoint,
        candidates: &[u64],
    ) -> Result<Option<(u64, u64)>, ReplayError> {
        let exit = after.exit;
        self.seek_steps(exit, 0)?;
        let hardware: Vec<HwBreakpoint> = candidates
            .iter()
            .map(|&address| HwBreakpoint {
                address,
                condition: HwCondition::Execute,
                len: 1,
            })
            .collect();
        let mut counts = vec![0u64; candidates.len()];
        let rip = self.engine.registers()?[16];
        let mut at = candidates.iter().position(|&candidate| candidate == rip);
        loop {
            if let Some(index) = at {
                counts[index] += 1;
                self.position.steps = None;
                let hit = self.over_one_instruction()?;
                if self.engine.exits() != exit {
                    self.position = self.current_moment(Some(0))?;
                    return Ok(None);
                }
                if hit.is_some() && self.matches_state(&after.state)? {
                    self.position = ExecutionPoint {
                        steps: None,
                        ..*after
                    };
                    return Ok(Some((candidates[index], counts[index])));
                }
            }
            let stop = self
                .engine
                .resume(false, &hardware, Some(exit + 1), &mut || false)?;
            self.position.steps = None;
            match stop {
                EngineStop::Breakpoint { address } => {
                    at = candidates
                        .iter()
                        .position(|&candidate| candidate == address);
                }
                EngineStop::Watchpoint { .. } => {
                    self.engine.take_watch_hit();
                    if self.matches_state(&after.state)? {
                        self.position = ExecutionPoint {
                            steps: None,
                            ..*after
                        };
                        return Ok(None);
                    }
                    // The next run would pass a breakpoint where it starts.
                    let rip = self.engine.registers()?[16];
                    at = candidates.iter().position(|&candidate| candidate == rip);
                }
                EngineStop::Boundary
                | EngineStop::Ended { .. }
                | EngineStop::Stepped
                | EngineStop::Interrupted => {
                    self.position = self.current_moment(None)?;
                    return Ok(None);
                }
            }
        }
    }

    /// One whole instruction forward: a single step and, for a `rep` string
    /// instruction the step left between iterations (run natively, each
    /// iteration is a step), the run to its end. Returns the watch hit it made.
    pub fn over_one_instruction(&mut self) -> Result<Option<WatchHit>, ReplayError> {
        let exit = self.engine.exits();
        let rip = self.engine.registers()?[16];
        self.step_once(&[])?;
        let mut hit = self.engine.take_watch_hit();
        if self.engine.exits() != exit || self.engine.registers()?[16] != rip {
            return Ok(hit);
        }
        let Some(next) = self.engine.next_instruction()? else {
            return Ok(hit);
        };
        let end = [HwBreakpoint {
            address: next,
            condition: HwCondition::Execute,
            len: 1,
        }];
        loop {
            let stop = self
                .engine
                .resume(false, &end, Some(exit + 1), &mut || false)?;
            hit = hit.or(self.engine.take_watch_hit());
            // A hit inside the instruction stops at its end too.
            if !matches!(stop, EngineStop::Watchpoint { .. })
                || self.engine.registers()?[16] == next
            {
                break;
            }
        }
        self.position = self.current_moment(None)?;
        Ok(hit)
    }

    /// `monitor goto EXIT@PC#N`: the `occurrence`-th time (from 1) the
    /// instruction at `pc` is about to run in the interval after exit `exit`. A
    /// position named without counting single steps: `writes` lists positions
    /// so, and breakpoints reach them at full speed.
    pub fn goto_occurrence(
        &mut self,
        exit: u64,
        pc: u64,
        occurrence: u64,
    ) -> Result<(), ReplayError> {
        self.move_or_stay(exit, |timeline| {
            timeline.find_occurrence(exit, pc, occurrence)
        })
    }

    /// Checks that `exit` is in the history and runs `movement`; where it fails,
    /// goes back where the debugger last saw the machine (it rereads registers
    /// only after a successful move).
    fn move_or_stay(
        &mut self,
        exit: u64,
        movement: impl FnOnce(&mut Self) -> Result<(), ReplayError>,
    ) -> Result<(), ReplayError> {
        if exit > self.last_exit() {
            return Err(TimelineError::PastTheEnd {
                exit,
                last: self.last_exit(),
            }
            .into());
        }
        let from = self.position;
        let moved = movement(self);
        if moved.is_err() {
            if let Err(error) = self.seek(&from) {
                tracing::warn!(%error, "cannot return to {from} after a failed goto");
            }
        }
        moved
    }

    fn find_occurrence(&mut self, exit: u64, pc: u64, occurrence: u64) -> Result<(), ReplayError> {
        self.seek_steps(exit, 0)?;
        let hardware = [HwBreakpoint {
            address: pc,
            condition: HwCondition::Execute,
            len: 1,
        }];
        let mut seen = u64::from(self.engine.registers()?[16] == pc);
        while seen < occurrence {
            let stop = self
                .engine
                .resume(false, &hardware, Some(exit + 1), &mut || false)?;
            self.position.steps = None;
            match stop {
                EngineStop::Breakpoint { .. } => seen += 1,
                EngineStop::Watchpoint { .. } => {
                    self.engine.take_watch_hit();
                    // The next run would pass a breakpoint where it starts.
                    if self.engine.registers()?[16] == pc {
                        seen += 1;
                    }
                }
                EngineStop::Boundary
                | EngineStop::Ended { .. }
                | EngineStop::Stepped
                | EngineStop::Interrupted => {
                    self.position = self.current_moment(None)?;
                    return Err(TimelineError::NoSuchOccurrence {
                        exit,
                        pc,
                        occurrence,
                        seen,
                    }
                    .into());
                }
            }
        }
        self.position = self.current_moment(None)?;
        self.named_occurrence = Some((self.position, pc, occurrence));
        Ok(())
    }

    /// The current position as `(pc, occurrence)` in its interval (see
    /// [`Timeline::goto_occurrence`]), if it was reached so.
    pub fn position_as_occurrence(&self) -> Option<(u64, u64)> {
        self.named_occurrence
            .filter(|(point, ..)| same_point(point, &self.position))
            .map(|(_, pc, occurrence)| (pc, occurrence))
    }

    /// `monitor goto`: a position as `EXIT` or `EXIT:STEPS`.
    pub fn goto(&mut self, exit: u64, steps: u64) -> Result<(), ReplayError> {
        self.move_or_stay(exit, |timeline| timeline.seek_steps(exit, steps))
    }

    /// `monitor checkpoint`: returns the checkpoint's number, which `monitor
    /// restart` takes and `monitor info checkpoints` shows.
    pub fn pin_checkpoint(&mut self) -> Result<usize, ReplayError> {
        self.resolve_steps()?;
        let number = self.pins_made + 1;
        self.checkpoint(Some(number))?;
        self.pins_made = number;
        Ok(number)
    }

    /// The pinned checkpoints with their numbers, in the order they were made
    /// (not in history order: a checkpoint made earlier in the history later
    /// must not renumber the others).
    fn pinned(&self) -> Vec<(usize, &Checkpoint<E::MachineState>)> {
        let mut pinned: Vec<_> = self
            .checkpoints
            .iter()
            .filter_map(|checkpoint| checkpoint.pin.map(|number| (number, checkpoint)))
            .collect();
        pinned.sort_by_key(|&(number, _)| number);
        pinned
    }

    /// `monitor restart N`.
    pub fn restart(&mut self, number: usize) -> Result<ExecutionPoint, ReplayError> {
        let Some(index) = self
            .checkpoints
            .iter()
            .position(|checkpoint| checkpoint.pin == Some(number))
        else {
            return Err(TimelineError::NoCheckpoint {
                number,
                count: self.pinned().len(),
            }
            .into());
        };
        self.restore(index)?;
        Ok(self.position)
    }

    /// `monitor info checkpoints`.
    pub fn describe_checkpoints(&self) -> String {
        let mut text = String::new();
        for (number, checkpoint) in self.pinned() {
            text.push_str(&format!(
                "{}  at {} (rip {:#x})\n",
                number, checkpoint.moment, checkpoint.moment.state.rip
            ));
        }
        if text.is_empty() {
            text.push_str("no checkpoints (create one with `monitor checkpoint`)\n");
        }
        text.push_str(&format!(
            "{} automatic checkpoints, {} bytes of pages stored\n",
            self.checkpoints.len() - self.pinned().len(),
            self.store.stats().page_bytes
        ));
        text
    }
}

/// Whether `a` is strictly before `b` in the history. Within one interval, unknown
/// steps count as "somewhere after the start".
fn before(a: &ExecutionPoint, b: &ExecutionPoint) -> bool {
    match a.exit.cmp(&b.exit) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => match (a.steps, b.steps) {
            (Some(a), Some(b)) => a < b,
            (Some(0), None) => true,
            _ => false,
        },
    }
}

fn same_point(a: &ExecutionPoint, b: &ExecutionPoint) -> bool {
    a.exit == b.exit
        && match (a.steps, b.steps) {
            (Some(x), Some(y)) => x == y,
            _ => a.state == b.state,
        }
}

fn snapshot_error(error: snapshots::SnapshotError) -> ReplayError {
    TimelineError::CheckpointStore(error).into()
}

#[cfg(test)]
mod tests;
