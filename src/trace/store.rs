//! The trace directory ([`TraceDir`]) and where traces live by default ([`Store`]).
//!
//! The files of one trace are named in [`super::layout`]. The `header` file is
//! written atomically (temporary file + rename): it exists complete or not at all.
//!
//! Every file a trace directory writes carries its [`RecordingId`], drawn when the
//! directory is created; an opened trace takes the id from its header, and every
//! other file is read only after its id was found equal to the header's (the image,
//! raw bytes, is tied by the digest in the header instead). So a file copied in
//! from another recording is refused with its name, never replayed.
//!
//! Without `-o`, traces go to `$XDG_DATA_HOME/lore-dbg/<guest-stem>-<n>/`
//! (`~/.local/share/lore-dbg/` when `XDG_DATA_HOME` is unset), `n` being the
//! smallest index whose directory does not exist, claimed with an atomic
//! `mkdir`. A `latest-trace` symlink there names the newest trace; it is replaced
//! atomically (new symlink under a temporary name, then `rename`), as rr does.
//! [`Store`] takes its base directory as a value so tests never touch the
//! process environment.

use super::chunk::{ChunkReader, ChunkWriter, PREAMBLE_LEN};
use super::error::{Corruption, TraceError};
use super::header::{image_digest, TraceHeader};
use super::id::RecordingId;
use super::layout::{
    EVENTS_FILE, HEADER_CHUNK_KIND, HEADER_FILE, HEADER_FILE_KIND, IMAGE_FILE, LATEST_LINK,
    SNAPSHOTS_FILE,
};
use super::reader::{EventLog, EventReader};
use super::writer::{EventWriter, WriterOptions};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest header chunk accepted (the header's own caps keep it far below).
const MAX_HEADER_BYTES: usize = 1 << 20;

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TraceError + 'a {
    move |source| TraceError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Makes temporary names unique among the threads of this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_name(base: &str) -> String {
    let count = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{base}.tmp-{}-{count}", std::process::id())
}

/// One trace directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceDir {
    path: PathBuf,
    /// The recording's id: drawn by [`TraceDir::create`], read from the header by
    /// [`TraceDir::open`].
    recording: RecordingId,
}

/// Bytes of all files in the directory `path`.
fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}

impl TraceDir {
    /// Makes a new trace directory at `dir` (parents included), for a new
    /// recording with a fresh [`RecordingId`]. An existing empty directory is
    /// accepted; anything else there is refused.
    pub fn create(dir: &Path) -> Result<Self, TraceError> {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                let mut entries = fs::read_dir(dir).map_err(|_| TraceError::AlreadyExists {
                    path: dir.to_owned(),
                })?;
                if entries.next().is_some() {
                    return Err(TraceError::AlreadyExists {
                        path: dir.to_owned(),
                    });
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
            }
            Err(error) => return Err(io_error("create directory", dir)(error)),
        }
        Ok(Self {
            path: dir.to_owned(),
            recording: RecordingId::generate(),
        })
    }

    /// Opens an existing trace and reads its header (which checks the format
    /// version); the header's recording id is the one every other file must carry.
    pub fn open(dir: &Path) -> Result<(Self, TraceHeader), TraceError> {
        let metadata = fs::metadata(dir).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => TraceError::NoSuchTrace {
                path: dir.to_owned(),
            },
            _ => io_error("open", dir)(error),
        })?;
        if !metadata.is_dir() || !dir.join(HEADER_FILE).is_file() {
            return Err(TraceError::NotATrace {
                path: dir.to_owned(),
            });
        }
        let (header, recording) = read_header_file(&dir.join(HEADER_FILE))?;
        let trace = Self {
            path: dir.to_owned(),
            recording,
        };
        Ok((trace, header))
    }

    /// The id of the recording the trace holds.
    pub fn recording_id(&self) -> RecordingId {
        self.recording
    }

    /// Refuses `path`, found to carry `found`, unless that is the trace's id.
    fn check_tie(&self, path: &Path, found: RecordingId) -> Result<(), TraceError> {
        if found == self.recording {
            return Ok(());
        }
        Err(TraceError::ForeignFile {
            path: path.to_owned(),
            header: self.header_path(),
            found,
            expected: self.recording,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header file.
    pub fn header_path(&self) -> PathBuf {
        self.path.join(HEADER_FILE)
    }

    /// The events file.
    pub fn events_path(&self) -> PathBuf {
        self.path.join(EVENTS_FILE)
    }

    /// The copy of the guest image.
    pub fn image_path(&self) -> PathBuf {
        self.path.join(IMAGE_FILE)
    }

    /// Where the snapshots go.
    pub fn snapshots_path(&self) -> PathBuf {
        self.path.join(SNAPSHOTS_FILE)
    }

    /// Writes the header, atomically.
    pub fn write_header(&self, header: &TraceHeader) -> Result<(), TraceError> {
        let path = self.header_path();
        let payload = header.encode().map_err(|source| TraceError::Header {
            path: path.clone(),
            source,
        })?;
        let temp = self.path.join(temp_name(HEADER_FILE));
        let file = File::create(&temp).map_err(io_error("create", &temp))?;
        let write = || -> io::Result<File> {
            let mut chunks = ChunkWriter::new(file, HEADER_FILE_KIND, self.recording)?;
            chunks.write_chunk(HEADER_CHUNK_KIND, &payload)?;
            Ok(chunks.into_inner())
        };
        let result = write()
            .map_err(io_error("write", &temp))
            .and_then(|file| file.sync_all().map_err(io_error("sync", &temp)))
            .and_then(|()| fs::rename(&temp, &path).map_err(io_error("rename", &temp)));
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Forces everything written into the trace onto the disk (the files, then the
    /// directory entries), so that a finished recording survives a power loss, not
    /// only a killed recorder. Files the trace does not have are skipped.
    pub fn sync_to_disk(&self) -> Result<(), TraceError> {
        for path in [
            self.events_path(),
            self.snapshots_path(),
            self.image_path(),
            self.header_path(),
        ] {
            match File::open(&path) {
                Ok(file) => file.sync_all().map_err(io_error("sync", &path))?,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error("open", &path)(error)),
            }
        }
        File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("sync", &self.path))
    }

    /// Reads and checks the header (a header file is what makes a trace: it is not
    /// checked against the trace's id, it defines it).
    pub fn read_header(&self) -> Result<TraceHeader, TraceError> {
        read_header_file(&self.header_path()).map(|(header, _)| header)
    }

    /// Copies the guest image into the trace; returns its [`image_digest`].
    pub fn copy_image(&self, image: &Path) -> Result<u64, TraceError> {
        let bytes = fs::read(image).map_err(io_error("read", image))?;
        let target = self.image_path();
        let mut file = File::create(&target).map_err(io_error("create", &target))?;
        file.write_all(&bytes).map_err(io_error("write", &target))?;
        Ok(image_digest(&bytes))
    }

    /// Reads the guest image, at most `header.memory_size` bytes (a recorded image
    /// fits in guest memory), and checks it against the header's digest.
    pub fn read_image(&self, header: &TraceHeader) -> Result<Vec<u8>, TraceError> {
        let path = self.image_path();
        let file = File::open(&path).map_err(io_error("open", &path))?;
        let mut image = Vec::new();
        file.take(header.memory_size.saturating_add(1))
            .read_to_end(&mut image)
            .map_err(io_error("read", &path))?;
        if image.len() as u64 > header.memory_size || image_digest(&image) != header.image_digest {
            return Err(TraceError::ImageMismatch { path });
        }
        Ok(image)
    }

    /// Where the copy of multiboot module `index` lives.
    pub fn module_path(&self, index: usize) -> PathBuf {
        self.path.join(super::layout::module_file(index))
    }

    /// Writes the copy of multiboot module `index`.
    pub fn write_module(&self, index: usize, data: &[u8]) -> Result<(), TraceError> {
        let path = self.module_path(index);
        fs::write(&path, data).map_err(io_error("write", &path))
    }

    /// Reads multiboot module `index` (at most the guest memory size, as every
    /// module fits there) and checks it against the header's record of it.
    pub fn read_module(&self, header: &TraceHeader, index: usize) -> Result<Vec<u8>, TraceError> {
        let path = self.module_path(index);
        let record = header.modules.get(index);
        let file = File::open(&path).map_err(io_error("open", &path))?;
        let mut data = Vec::new();
        file.take(header.memory_size.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(io_error("read", &path))?;
        match record {
            Some(record)
                if data.len() as u64 == record.size && image_digest(&data) == record.digest =>
            {
                Ok(data)
            }
            _ => Err(TraceError::ImageMismatch { path }),
        }
    }

    /// Starts the event log.
    pub fn event_writer(&self) -> Result<EventWriter, TraceError> {
        EventWriter::create(&self.events_path(), self.recording)
    }

    /// Starts the event log with explicit writer options (the events file must not
    /// exist yet).
    pub fn event_writer_with(&self, options: WriterOptions) -> Result<EventWriter, TraceError> {
        let path = self.events_path();
        let file = File::create_new(&path).map_err(io_error("create", &path))?;
        EventWriter::with_options(file, path, self.recording, options)
    }

    /// Iterates over the event log, once its preamble says it is this recording's.
    pub fn event_reader(&self) -> Result<EventReader, TraceError> {
        let reader = EventReader::open(&self.events_path())?;
        self.check_tie(reader.path(), reader.recording_id())?;
        Ok(reader)
    }

    /// Reads the whole event log, at most `max_events` events. A truncated log is
    /// not an error here (see [`EventLog::truncation`]), a log of another recording
    /// is.
    pub fn read_events(&self, max_events: usize) -> Result<EventLog, TraceError> {
        match self.event_reader() {
            Ok(reader) => reader.into_log(max_events),
            // Cut inside its preamble: nothing to tie, nothing to replay.
            Err(truncation @ TraceError::Truncated { .. }) => Ok(EventLog {
                events: Vec::new(),
                truncation: Some(truncation),
            }),
            Err(error) => Err(error),
        }
    }

    /// Starts the snapshots file, for guest memories of `memory_len` bytes, owned
    /// by this recording.
    pub fn snapshot_writer(
        &self,
        memory_len: usize,
        options: snapshots::WriterOptions,
    ) -> Result<snapshots::DiskWriter<File>, TraceError> {
        let path = self.snapshots_path();
        snapshots::DiskWriter::create_owned(&path, memory_len, options, self.recording.0)
            .map_err(|source| TraceError::Snapshots { path, source })
    }

    /// Refuses a snapshots file of another recording, reading only its header. A
    /// trace without snapshots passes.
    pub fn check_snapshots_tie(&self) -> Result<(), TraceError> {
        let path = self.snapshots_path();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error("open", &path)(error)),
        };
        let owner =
            snapshots::DiskReader::read_owner(&file).map_err(|source| TraceError::Snapshots {
                path: path.clone(),
                source,
            })?;
        self.check_tie(&path, RecordingId(owner))
    }

    /// Opens the snapshots file (which checks every record; see
    /// [`snapshots::DiskReader::damage`] for damage after its intact prefix), once
    /// its header says it is this recording's. `None` when the trace has none.
    pub fn open_snapshots(&self) -> Result<Option<snapshots::DiskReader>, TraceError> {
        self.check_snapshots_tie()?;
        let path = self.snapshots_path();
        match snapshots::DiskReader::open(&path) {
            Ok(reader) => Ok(Some(reader)),
            Err(snapshots::SnapshotError::Io(error)) if error.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(source) => Err(TraceError::Snapshots { path, source }),
        }
    }

    /// Bytes of all files in the directory.
    pub fn size_bytes(&self) -> u64 {
        dir_size(&self.path)
    }
}

/// Reads and checks the header file at `path`: its one chunk, and nothing after
/// it. Returns the header and the recording id of its preamble.
fn read_header_file(path: &Path) -> Result<(TraceHeader, RecordingId), TraceError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    let input = BufReader::new(file).take(MAX_HEADER_BYTES as u64);
    let mut chunks = ChunkReader::new(input, HEADER_FILE_KIND)
        .map_err(|error| TraceError::from_chunk(path.to_owned(), error, None))?;
    let corrupt = |chunk, offset, why| TraceError::Corrupt {
        path: path.to_owned(),
        chunk,
        offset,
        why,
    };
    let chunk = match chunks.next_chunk() {
        Ok(Some(chunk)) => chunk,
        Ok(None) => {
            return Err(TraceError::Truncated {
                path: path.to_owned(),
                chunk: 0,
                offset: PREAMBLE_LEN as u64,
                last_exit: None,
            })
        }
        Err(error) => return Err(TraceError::from_chunk(path.to_owned(), error, None)),
    };
    if chunk.kind != HEADER_CHUNK_KIND {
        return Err(corrupt(
            0,
            PREAMBLE_LEN as u64,
            Corruption::NotAHeaderChunk { kind: chunk.kind },
        ));
    }
    // Written atomically, the file holds exactly one chunk: anything after it is
    // damage, whatever it looks like.
    let end = chunks.offset();
    if !matches!(chunks.next_chunk(), Ok(None)) {
        return Err(corrupt(1, end, Corruption::AfterHeader));
    }
    let header = TraceHeader::decode(&chunk.payload).map_err(|source| TraceError::Header {
        path: path.to_owned(),
        source,
    })?;
    Ok((header, chunks.recording_id()))
}

/// One line of `lore-dbg ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSummary {
    /// The trace directory.
    pub path: PathBuf,
    /// Its name in the store (`<guest-stem>-<n>`).
    pub name: String,
    /// From the header, when it reads.
    pub guest_name: Option<String>,
    /// From the header, when it reads.
    pub recorded_at_unix_secs: Option<i64>,
    /// Bytes of its files.
    pub size_bytes: u64,
    /// Whether `latest-trace` points at it.
    pub is_latest: bool,
    /// Why the header does not read, if it does not.
    pub problem: Option<String>,
}

/// The directory holding the traces recorded without `-o`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    base: PathBuf,
}

impl Store {
    /// A store rooted at `base` (which holds the traces and `latest-trace`).
    pub fn at(base: impl Into<PathBuf>) -> Self {
        Self { base: base.into() }
    }

    /// The default store: `$XDG_DATA_HOME/lore-dbg`, else
    /// `$HOME/.local/share/lore-dbg`.
    pub fn default_location() -> Result<Self, TraceError> {
        Self::from_env_values(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
    }

    /// [`Store::default_location`] from explicit variable values. A relative or
    /// empty `XDG_DATA_HOME` is ignored, as the XDG specification says.
    pub fn from_env_values(
        xdg_data_home: Option<OsString>,
        home: Option<OsString>,
    ) -> Result<Self, TraceError> {
        let data_home = match xdg_data_home.map(PathBuf::from) {
            Some(path) if path.is_absolute() => path,
            _ => match home {
                Some(home) if !home.is_empty() => PathBuf::from(home).join(".local/share"),
                _ => return Err(TraceError::NoDataDir),
            },
        };
        Ok(Self::at(data_home.join("lore-dbg")))
    }

    /// The directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The `latest-trace` symlink.
    pub fn latest_link(&self) -> PathBuf {
        self.base.join(LATEST_LINK)
    }

    /// Creates `<guest-stem>-<n>` for a recording of `guest` (smallest free `n`)
    /// and points `latest-trace` at it.
    pub fn create_trace(&self, guest: &Path) -> Result<TraceDir, TraceError> {
        fs::create_dir_all(&self.base).map_err(io_error("create directory", &self.base))?;
        let stem = guest
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .filter(|stem| !stem.is_empty() && !stem.starts_with('.'))
            .unwrap_or_else(|| "guest".to_owned());
        for index in 0u64.. {
            let dir = self.base.join(format!("{stem}-{index}"));
            // `create_dir` is the atomic claim: two recorders never share an index.
            match fs::create_dir(&dir) {
                Ok(()) => {
                    self.set_latest(&dir)?;
                    return Ok(TraceDir {
                        path: dir,
                        recording: RecordingId::generate(),
                    });
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(io_error("create directory", &dir)(error)),
            }
        }
        unreachable!("u64 indices do not run out")
    }

    /// Points `latest-trace` at `trace`, atomically: a reader sees the old link
    /// or the new one, never none.
    pub fn set_latest(&self, trace: &Path) -> Result<(), TraceError> {
        // Relative when the trace is in the store, so the store can move.
        let target = match trace.strip_prefix(&self.base) {
            Ok(relative) if relative.components().count() == 1 => relative.to_owned(),
            _ => trace.to_owned(),
        };
        let temp = self.base.join(temp_name(LATEST_LINK));
        std::os::unix::fs::symlink(&target, &temp).map_err(io_error("create symlink", &temp))?;
        let link = self.latest_link();
        fs::rename(&temp, &link).map_err(|source| {
            let _ = fs::remove_file(&temp);
            io_error("replace", &link)(source)
        })
    }

    /// Where `latest-trace` points.
    pub fn latest(&self) -> Result<PathBuf, TraceError> {
        let link = self.latest_link();
        let target = fs::read_link(&link).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => TraceError::NoLatestTrace { link: link.clone() },
            _ => io_error("read symlink", &link)(error),
        })?;
        let path = self.base.join(target);
        if !path.exists() {
            return Err(TraceError::NoSuchTrace { path });
        }
        Ok(path)
    }

    /// The trace the user means: `given`, or else the latest one.
    pub fn resolve(&self, given: Option<&Path>) -> Result<PathBuf, TraceError> {
        match given {
            Some(path) => Ok(path.to_owned()),
            None => self.latest(),
        }
    }

    /// The traces in the store, oldest first (by recording time, then name).
    /// Directories whose header does not read are listed with a `problem`.
    pub fn list(&self) -> Result<Vec<TraceSummary>, TraceError> {
        let entries = match fs::read_dir(&self.base) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error("list", &self.base)(error)),
        };
        let latest = self.latest().ok();
        let mut traces = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("list", &self.base))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // `file_type` does not follow symlinks: `latest-trace` is skipped.
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if !is_dir || name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let (guest_name, recorded_at_unix_secs, problem) = match TraceDir::open(&path) {
                Ok((_, header)) => (
                    Some(header.guest_name),
                    Some(header.recorded_at_unix_secs),
                    None,
                ),
                Err(error) => (None, None, Some(error.to_string())),
            };
            traces.push(TraceSummary {
                is_latest: latest.as_deref() == Some(path.as_path()),
                size_bytes: dir_size(&path),
                path,
                name,
                guest_name,
                recorded_at_unix_secs,
                problem,
            });
        }
        traces.sort_by(|a, b| {
            (a.recorded_at_unix_secs, &a.name).cmp(&(b.recorded_at_unix_secs, &b.name))
        });
        Ok(traces)
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for `lore-dbg ls`.
pub fn format_utc(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::event::{Event, Position};
    use crate::trace::header::tests::sample_header;

    /// A fresh, unique scratch directory, removed on drop.
    #[derive(Debug)]
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "lore-trace-test-{name}-{}-{}",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn end(exit: u64) -> Event {
        Event::End {
            exit,
            status: 1,
            regs_digest: 2,
            memory_digest: 3,
            guest_ns: 4,
            deferred_injections: 0,
            stopped: false,
            delivery: Default::default(),
        }
    }

    #[test]
    fn create_write_open_read() {
        let scratch = Scratch::new("trace");
        let image = scratch.0.join("hello.elf");
        fs::write(&image, b"\x7fELF image").expect("write image");
        let dir = scratch.0.join("nested/trace");
        let trace = TraceDir::create(&dir).expect("create");
        let mut header = sample_header();
        header.image_digest = trace.copy_image(&image).expect("copy");
        trace.write_header(&header).expect("header");
        let mut writer = trace.event_writer().expect("writer");
        for exit in 0..1000 {
            writer
                .push(&Event::Interrupt {
                    vector: 0x21,
                    at: Position::Exit(exit),
                })
                .expect("push");
        }
        writer.push(&end(1000)).expect("push");
        writer.finish().expect("finish");

        let (opened, read_header) = TraceDir::open(&dir).expect("open");
        assert_eq!(read_header, header);
        assert_eq!(read_header.image_digest, image_digest(b"\x7fELF image"));
        let log = opened.read_events(10_000).expect("events");
        assert!(log.truncation.is_none());
        assert_eq!(log.events.len(), 1001);
        assert!(opened.size_bytes() > 0);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // A second create on a non-empty directory is refused.
        assert!(matches!(
            TraceDir::create(&dir),
            Err(TraceError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn open_errors_are_clear() {
        let scratch = Scratch::new("open");
        let missing = scratch.0.join("missing");
        assert!(matches!(
            TraceDir::open(&missing),
            Err(TraceError::NoSuchTrace { .. })
        ));
        assert!(matches!(
            TraceDir::open(&scratch.0),
            Err(TraceError::NotATrace { .. })
        ));
        let trace = TraceDir::create(&scratch.0.join("t")).expect("create");
        trace.write_header(&sample_header()).expect("header");
        // Another format version.
        let mut bytes = fs::read(trace.header_path()).expect("read");
        bytes[8] = 99;
        fs::write(trace.header_path(), &bytes).expect("write");
        let error = TraceDir::open(trace.path()).expect_err("version");
        assert!(matches!(error, TraceError::Version { found: 99, .. }));
        assert!(error.to_string().contains("version 99"), "{error}");
        // Not a trace file at all.
        fs::write(trace.header_path(), b"hello, this is text").expect("write");
        assert!(matches!(
            TraceDir::open(trace.path()),
            Err(TraceError::NotATrace { .. })
        ));
    }

    #[test]
    fn store_numbers_links_resolves_and_lists() {
        let scratch = Scratch::new("store");
        let store = Store::at(scratch.0.join("lore-dbg"));
        assert!(matches!(
            store.resolve(None),
            Err(TraceError::NoLatestTrace { .. })
        ));
        assert!(store.list().expect("empty").is_empty());
        let guest = Path::new("/somewhere/hello.elf");
        let first = store.create_trace(guest).expect("first");
        let second = store.create_trace(guest).expect("second");
        assert_eq!(first.path(), store.base().join("hello-0"));
        assert_eq!(second.path(), store.base().join("hello-1"));
        assert_eq!(store.resolve(None).expect("latest"), second.path());
        let given = Path::new("/elsewhere");
        assert_eq!(store.resolve(Some(given)).expect("given"), given);
        // The link is relative, so the store can move.
        assert_eq!(
            fs::read_link(store.latest_link()).expect("link"),
            Path::new("hello-1")
        );
        // A freed index is reused (smallest unused), and becomes the latest.
        fs::remove_dir(first.path()).expect("remove");
        let third = store.create_trace(guest).expect("third");
        assert_eq!(third.path(), store.base().join("hello-0"));
        assert_eq!(store.latest().expect("latest"), third.path());

        let mut header = sample_header();
        header.recorded_at_unix_secs = 100;
        third.write_header(&header).expect("header");
        let listed = store.list().expect("list");
        assert_eq!(listed.len(), 2);
        // The trace without a header sorts first (no date) and says why.
        assert_eq!(listed[0].name, "hello-1");
        assert!(listed[0].problem.is_some());
        assert_eq!(listed[1].name, "hello-0");
        assert_eq!(listed[1].guest_name.as_deref(), Some("hello.elf"));
        assert_eq!(listed[1].recorded_at_unix_secs, Some(100));
        assert!(listed[1].is_latest && !listed[0].is_latest);
        assert!(listed[1].size_bytes > 0);
    }

    #[test]
    fn default_location_follows_xdg() {
        let store = Store::from_env_values(Some("/xdg".into()), Some("/home/u".into()));
        assert_eq!(store.expect("xdg").base(), Path::new("/xdg/lore-dbg"));
        let store = Store::from_env_values(Some("relative".into()), Some("/home/u".into()));
        assert_eq!(
            store.expect("home").base(),
            Path::new("/home/u/.local/share/lore-dbg")
        );
        assert!(matches!(
            Store::from_env_values(None, None),
            Err(TraceError::NoDataDir)
        ));
    }

    #[test]
    fn killed_recording_reads_as_truncated() {
        let scratch = Scratch::new("killed");
        let trace = TraceDir::create(&scratch.0.join("t")).expect("create");
        let mut writer = trace.event_writer().expect("writer");
        for exit in 0..100 {
            writer
                .push(&Event::Interrupt {
                    vector: 0x21,
                    at: Position::Exit(exit),
                })
                .expect("push");
        }
        writer.flush().expect("flush");
        writer.finish().expect("finish without end");
        let log = trace.read_events(1000).expect("readable");
        assert_eq!(log.events.len(), 100);
        let message = log.truncation.expect("no end record").to_string();
        assert!(message.contains("replay stops at exit 99"), "{message}");
        // SIGKILL: the file ends anywhere; what is left reads as a prefix.
        let mut writer = EventWriter::with_options(
            File::create(trace.events_path()).expect("recreate"),
            trace.events_path(),
            trace.recording_id(),
            crate::trace::writer::WriterOptions {
                chunk_target: 100,
                queue_depth: 2,
            },
        )
        .expect("writer");
        for exit in 0..1000 {
            writer
                .push(&Event::Interrupt {
                    vector: 0x21,
                    at: Position::Exit(exit),
                })
                .expect("push");
        }
        writer.push(&end(1000)).expect("push");
        writer.finish().expect("finish");
        let full_len = fs::metadata(trace.events_path()).expect("size").len();
        for cut in [full_len - 1, full_len / 2, 17, 16, 3] {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(trace.events_path())
                .expect("open");
            file.set_len(cut).expect("truncate");
            let log = trace.read_events(10_000).expect("readable");
            assert!(log.events.len() < 1001, "cut at {cut}");
            for (index, event) in log.events.iter().enumerate() {
                assert_eq!(event.exit(), index as u64, "cut at {cut}");
            }
            assert!(
                matches!(log.truncation, Some(TraceError::Truncated { .. })),
                "cut at {cut}"
            );
        }
        // An events file that was never written to.
        fs::write(trace.events_path(), b"").expect("empty");
        let log = trace.read_events(1000).expect("readable");
        assert!(log.events.is_empty());
        assert!(log.truncation.is_some());
    }

    /// A trace at `dir` with a header, an image, a short event log and snapshots.
    fn small_trace(dir: &Path) -> (TraceDir, TraceHeader) {
        let trace = TraceDir::create(dir).expect("create");
        let mut header = sample_header();
        fs::write(trace.image_path(), b"image").expect("image");
        header.image_digest = image_digest(b"image");
        header.memory_size = 16 * snapshots::PAGE_SIZE as u64;
        trace.write_header(&header).expect("header");
        let mut writer = trace.event_writer().expect("writer");
        writer.push(&end(7)).expect("push");
        writer.finish().expect("finish");
        let mut snapshots = trace
            .snapshot_writer(
                header.memory_size as usize,
                snapshots::WriterOptions::default(),
            )
            .expect("snapshots");
        let memory = vec![1u8; header.memory_size as usize];
        snapshots::SnapshotSink::take(
            &mut snapshots,
            &memory,
            snapshots::MemoryState::Unknown,
            7,
            &[],
        )
        .expect("snapshot");
        (trace, header)
    }

    #[test]
    fn files_of_another_recording_are_refused_by_name() {
        let scratch = Scratch::new("ties");
        let (trace, _) = small_trace(&scratch.0.join("a"));
        let (other, _) = small_trace(&scratch.0.join("b"));
        assert_ne!(trace.recording_id(), other.recording_id());
        let (opened, _) = TraceDir::open(trace.path()).expect("open");
        assert_eq!(opened.recording_id(), trace.recording_id());
        assert!(opened
            .read_events(10)
            .expect("own events")
            .truncation
            .is_none());
        opened.check_snapshots_tie().expect("own snapshots");
        assert!(opened.open_snapshots().expect("own snapshots").is_some());

        fs::copy(other.events_path(), trace.events_path()).expect("copy events");
        fs::copy(other.snapshots_path(), trace.snapshots_path()).expect("copy snapshots");
        let foreign = |result: Result<(), TraceError>, file: PathBuf| {
            let error = result.expect_err("foreign file accepted");
            assert!(
                matches!(&error, TraceError::ForeignFile { path, found, expected, .. }
                    if *path == file && *found == other.recording_id()
                        && *expected == trace.recording_id()),
                "{error:?}"
            );
            let message = error.to_string();
            let name = file
                .file_name()
                .and_then(|name| name.to_str())
                .expect("name");
            let expected = format!(
                "{name} was written by another recording than {}",
                trace.header_path().display()
            );
            assert!(message.contains(&expected), "{message}");
            assert!(
                message.contains(&other.recording_id().to_string()),
                "{message}"
            );
        };
        foreign(opened.read_events(10).map(|_| ()), trace.events_path());
        foreign(opened.event_reader().map(|_| ()), trace.events_path());
        foreign(opened.check_snapshots_tie(), trace.snapshots_path());
        foreign(opened.open_snapshots().map(|_| ()), trace.snapshots_path());
        // A trace without snapshots has nothing to tie.
        fs::remove_file(trace.snapshots_path()).expect("remove");
        opened.check_snapshots_tie().expect("no snapshots");
        assert!(opened.open_snapshots().expect("no snapshots").is_none());
    }

    #[test]
    fn the_image_must_match_and_fit_and_the_header_stand_alone() {
        let scratch = Scratch::new("image");
        let (trace, header) = small_trace(&scratch.0.join("t"));
        assert_eq!(trace.read_image(&header).expect("image"), b"image");
        for image in [
            &b"imagf"[..],
            b"",
            &vec![0u8; header.memory_size as usize + 1],
        ] {
            fs::write(trace.image_path(), image).expect("write");
            let error = trace.read_image(&header).expect_err("damaged image");
            assert!(
                matches!(error, TraceError::ImageMismatch { .. }),
                "{error:?}"
            );
            assert!(error.to_string().contains("guest.elf"), "{error}");
        }
        // Anything after the header's one chunk is damage.
        let mut bytes = fs::read(trace.header_path()).expect("read");
        let len = bytes.len() as u64;
        bytes.push(0);
        fs::write(trace.header_path(), &bytes).expect("write");
        let error = TraceDir::open(trace.path()).expect_err("trailing byte");
        assert!(
            matches!(
                error,
                TraceError::Corrupt {
                    chunk: 1,
                    why: Corruption::AfterHeader,
                    offset,
                    ..
                } if offset == len
            ),
            "{error:?}"
        );
    }

    #[test]
    fn formats_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18 11:06:40");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59");
    }
}
