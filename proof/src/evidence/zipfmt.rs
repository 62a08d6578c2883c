//! The package archive: writing it deterministically, reading it with bounded memory.
//!
//! Writing: the six files in fixed order, deflated (JSON shrinks 3-10x and the digests
//! inside are computed over the uncompressed files, so compression never affects what is
//! verified), every entry stamped 1980-01-01 00:00, mode 0644, "made by" Unix, no extra
//! fields, no comment, no data descriptors: the same files give the same bytes on any host.
//!
//! Reading ([`Limits`], checked before anything is decompressed): the archive is at most
//! 1 GiB; its end-of-central-directory record sits at the very end with no comment, no
//! ZIP64 and no data before the archive; at most 16 entries, exactly the six package file
//! names (no directories, paths, duplicates or non-UTF-8 names), stored or deflated,
//! unencrypted; each at most 256 MiB uncompressed, 1 GiB in all, and none expanding more
//! than 200:1 beyond its first MiB. Each entry is read to at most its declared size + 1
//! byte and must have exactly that size and its CRC-32. Invariant: a hostile archive costs
//! at most the caps in memory and ends in one `Archive` error, never a panic.

use super::{APPROVALS, ENVELOPE, EVENTS, FILES, JOB, LEDGER, MANIFEST};
use crate::error::EvidenceError;
use std::io::{Cursor, Read as _, Write as _};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, System, ZipArchive, ZipWriter};

/// The files of a package, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageFiles {
    pub events: Vec<u8>,
    pub ledger: Vec<u8>,
    pub approvals: Vec<u8>,
    pub job: Vec<u8>,
    pub manifest: Vec<u8>,
    pub envelope: Vec<u8>,
}

impl PackageFiles {
    /// The file called `name`.
    pub fn get(&self, name: &str) -> Option<&Vec<u8>> {
        Some(match name {
            EVENTS => &self.events,
            LEDGER => &self.ledger,
            APPROVALS => &self.approvals,
            JOB => &self.job,
            MANIFEST => &self.manifest,
            ENVELOPE => &self.envelope,
            _ => return None,
        })
    }

    /// The file called `name`, to change (tests, tools).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Vec<u8>> {
        Some(match name {
            EVENTS => &mut self.events,
            LEDGER => &mut self.ledger,
            APPROVALS => &mut self.approvals,
            JOB => &mut self.job,
            MANIFEST => &mut self.manifest,
            ENVELOPE => &mut self.envelope,
            _ => return None,
        })
    }
}

/// Caps on what [`read_package`] accepts (see the module docs for the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_archive_bytes: u64,
    pub max_entries: u64,
    pub max_entry_bytes: u64,
    pub max_total_bytes: u64,
    /// Largest uncompressed/compressed ratio of an entry above `ratio_free_bytes`.
    pub max_ratio: u64,
    pub ratio_free_bytes: u64,
}

const MIB: u64 = 1 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_archive_bytes: 1024 * MIB,
            max_entries: 16,
            max_entry_bytes: 256 * MIB,
            max_total_bytes: 1024 * MIB,
            max_ratio: 200,
            ratio_free_bytes: MIB,
        }
    }
}

fn archive_err(e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Archive(e.to_string())
}

/// The deterministic zip of `files` (see the module docs).
pub fn write_package(files: &PackageFiles) -> Result<Vec<u8>, EvidenceError> {
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(6))
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644)
        .system(System::Unix)
        .large_file(false);
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for name in FILES {
        let data = files.get(name).map(Vec::as_slice).unwrap_or_default();
        w.start_file(name, options).map_err(archive_err)?;
        w.write_all(data).map_err(archive_err)?;
    }
    Ok(w.finish().map_err(archive_err)?.into_inner())
}

/// Reads a package archive within `limits` (see the module docs).
pub fn read_package(zip: &[u8], limits: &Limits) -> Result<PackageFiles, EvidenceError> {
    if zip.len() as u64 > limits.max_archive_bytes {
        return Err(EvidenceError::Archive(format!(
            "{} bytes is over the {}-byte cap on a package",
            zip.len(),
            limits.max_archive_bytes
        )));
    }
    let entries = check_end_record(zip, limits)?;
    // The zip crate is not written against hostile input first: if it panics on some
    // archive, that archive is refused like any other malformed one.
    std::panic::catch_unwind(|| read_entries(zip, entries, limits))
        .unwrap_or_else(|_| Err(archive_err("malformed archive (the zip reader gave up)")))
}

/// The end-of-central-directory record: last 22 bytes, no comment, one disk, at most
/// `max_entries` entries, its central directory right before it (so no ZIP64 records and
/// no bytes before the archive). Returns the number of entries it declares.
fn check_end_record(zip: &[u8], limits: &Limits) -> Result<u64, EvidenceError> {
    let not_zip = || {
        EvidenceError::Archive(
            "not a zip archive, truncated, or has a trailing comment (no end-of-central-directory \
             record at its end)"
                .into(),
        )
    };
    let n = zip.len();
    if n < 22 {
        return Err(not_zip());
    }
    let eocd = &zip[n - 22..];
    let u16_at = |i: usize| u16::from_le_bytes([eocd[i], eocd[i + 1]]) as u64;
    let u32_at =
        |i: usize| u32::from_le_bytes([eocd[i], eocd[i + 1], eocd[i + 2], eocd[i + 3]]) as u64;
    if eocd[..4] != [0x50, 0x4b, 0x05, 0x06] || u16_at(20) != 0 {
        return Err(not_zip());
    }
    if u16_at(4) != 0 || u16_at(6) != 0 || u16_at(8) != u16_at(10) {
        return Err(archive_err("multi-disk archives are not evidence packages"));
    }
    let entries = u16_at(10);
    if entries > limits.max_entries {
        return Err(EvidenceError::Archive(format!(
            "{entries} entries; a package has 6 (at most {} are read)",
            limits.max_entries
        )));
    }
    if u32_at(16) + u32_at(12) != (n - 22) as u64 {
        return Err(archive_err(
            "the central directory is not where the end record says (truncated, ZIP64, or \
             extra bytes around the archive)",
        ));
    }
    Ok(entries)
}

fn read_entries(zip: &[u8], declared: u64, limits: &Limits) -> Result<PackageFiles, EvidenceError> {
    let mut archive = ZipArchive::new(Cursor::new(zip)).map_err(archive_err)?;
    let count = archive.len() as u64;
    // The zip crate keeps one entry per name: fewer entries than the end record declares
    // means some name appears twice (and one copy would go unread).
    if count != declared {
        return Err(EvidenceError::Archive(format!(
            "{declared} entries declared, {count} distinct names: duplicate entry names"
        )));
    }
    if count > limits.max_entries {
        return Err(EvidenceError::Archive(format!("{count} entries")));
    }
    // Everything about every entry is checked before any is decompressed.
    let mut slots: Vec<(usize, &'static str, u64)> = Vec::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let f = archive.by_index_raw(i).map_err(archive_err)?;
        let name = std::str::from_utf8(f.name_raw())
            .map_err(|_| archive_err("an entry name is not UTF-8"))?;
        let Some(known) = FILES.iter().copied().find(|k| *k == name) else {
            return Err(EvidenceError::Archive(format!(
                "entry {name:?} is not one of the package files ({})",
                FILES.join(", ")
            )));
        };
        if slots.iter().any(|(_, n, _)| *n == known) {
            return Err(EvidenceError::Archive(format!(
                "entry {name:?} appears twice"
            )));
        }
        if !matches!(
            f.compression(),
            CompressionMethod::Stored | CompressionMethod::Deflated
        ) {
            return Err(EvidenceError::Archive(format!(
                "{name}: compression method {:?} (only stored or deflated)",
                f.compression()
            )));
        }
        let size = f.size();
        if size > limits.max_entry_bytes {
            return Err(EvidenceError::Archive(format!(
                "{name}: {size} bytes uncompressed, over the {}-byte cap per file",
                limits.max_entry_bytes
            )));
        }
        let ratio_cap = f
            .compressed_size()
            .saturating_mul(limits.max_ratio)
            .max(limits.ratio_free_bytes);
        if size > ratio_cap {
            return Err(EvidenceError::Archive(format!(
                "{name}: expands {size}/{} bytes, over the {}:1 cap (a zip bomb?)",
                f.compressed_size(),
                limits.max_ratio
            )));
        }
        total = total.saturating_add(size);
        if total > limits.max_total_bytes {
            return Err(EvidenceError::Archive(format!(
                "over {} bytes uncompressed in all",
                limits.max_total_bytes
            )));
        }
        slots.push((i, known, size));
    }
    if let Some(missing) = FILES
        .iter()
        .find(|k| !slots.iter().any(|(_, n, _)| n == *k))
    {
        return Err(EvidenceError::Archive(format!("{missing} is missing")));
    }
    let mut files = PackageFiles::default();
    for (i, name, size) in slots {
        let mut f = archive
            .by_index(i)
            .map_err(|e| archive_err(format!("{name}: {e}")))?;
        let mut data = Vec::with_capacity(size.min(MIB) as usize);
        (&mut f)
            .take(size + 1)
            .read_to_end(&mut data)
            .map_err(|e| archive_err(format!("{name}: {e}")))?;
        if data.len() as u64 != size {
            return Err(EvidenceError::Archive(format!(
                "{name}: holds {} bytes, its header says {size}",
                data.len()
            )));
        }
        if let Some(slot) = files.get_mut(name) {
            *slot = data;
        }
    }
    Ok(files)
}
