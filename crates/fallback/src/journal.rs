//! The journal file: a header, then length-prefixed, checksummed records appended in order.
//!
//! fsync policy: every append is one `write(2)` of whole records made before the write is
//! acknowledged, so an acknowledged write survives a crash of the process; with
//! `journal_fsync` each append is also fsynced, so it survives a crash of the machine.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::op::{Record, Stop, decode_all, encode};

const MAGIC: &[u8; 10] = b"RRJOURNAL1";
const HEADER_LEN: u64 = 18;

/// What restoring a journal file found at its end.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cut {
    /// Where the valid records end (bytes from the start of the file); the file was cut there.
    pub offset: u64,
    /// Bytes dropped after it.
    pub dropped: u64,
    /// `true` when the last record was cut short (a write interrupted by a crash); `false`
    /// when a record failed its checksum.
    pub truncated: bool,
}

pub(crate) struct JournalFile {
    file: File,
    path: PathBuf,
    fsync: bool,
}

pub(crate) struct Opened {
    pub(crate) file: JournalFile,
    pub(crate) instance: u64,
    pub(crate) records: Vec<Record>,
    pub(crate) cut: Option<Cut>,
}

impl JournalFile {
    /// Opens the file, restoring what it holds, or creates it with a new instance id.
    pub(crate) fn open(path: &Path, fsync: bool) -> std::io::Result<Opened> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut journal = JournalFile {
            file,
            path: path.to_owned(),
            fsync,
        };
        let header_ok = bytes.len() as u64 >= HEADER_LEN && bytes.starts_with(MAGIC);
        if !header_ok {
            if !bytes.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is not a resilient-redis journal (bad header)",
                        path.display()
                    ),
                ));
            }
            let instance = fastrand::u64(..);
            journal.reset(instance)?;
            return Ok(Opened {
                file: journal,
                instance,
                records: Vec::new(),
                cut: None,
            });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[MAGIC.len()..HEADER_LEN as usize]);
        let instance = u64::from_le_bytes(id);
        let body = &bytes[HEADER_LEN as usize..];
        let (records, valid, stop) = decode_all(body);
        let cut = stop.map(|why| Cut {
            offset: HEADER_LEN + valid as u64,
            dropped: (body.len() - valid) as u64,
            truncated: why == Stop::Truncated,
        });
        if let Some(c) = &cut {
            // Keep the valid prefix; what follows can never be read back.
            journal.file.set_len(c.offset)?;
            journal.file.sync_all()?;
        }
        journal.file.seek(SeekFrom::End(0))?;
        Ok(Opened {
            file: journal,
            instance,
            records,
            cut,
        })
    }

    /// Appends whole records in one write, before the caller acknowledges anything.
    pub(crate) fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(64 * records.len());
        for r in records {
            encode(r, &mut buf);
        }
        self.file.write_all(&buf)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Empties the file down to its header.
    pub(crate) fn reset(&mut self, instance: u64) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&instance.to_le_bytes());
        self.file.write_all(&header)?;
        self.file.sync_all()
    }

    /// Rewrites the file with exactly `records` (after a header), atomically: a temporary file is
    /// written and fsynced, then renamed over the journal.
    pub(crate) fn rewrite(&mut self, instance: u64, records: &[Record]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("compact");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::new();
            buf.extend_from_slice(MAGIC);
            buf.extend_from_slice(&instance.to_le_bytes());
            for r in records {
                encode(r, &mut buf);
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.file.seek(SeekFrom::End(0))?;
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
