//! Hostile archives (G8): zip bombs by ratio, by lying sizes and by entry count, path
//! traversal and other foreign names, duplicate and missing entries, entries over the
//! caps, truncated and padded archives, non-UTF-8 names and contents, unsupported or
//! encrypted entries, envelopes with 0 or 2 signatures or the wrong payload type, deeply
//! nested JSON. Each is refused with a one-line error, never a panic, and the bombs with
//! bounded memory (measured by a per-thread counting allocator).

mod common;

use aetheris_proof::dsse::{pae, Envelope, EnvelopeSignature};
use aetheris_proof::evidence::{Limits, PackageFiles, FILES};
use aetheris_proof::EvidenceError;
use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Cursor, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

// ---- a per-thread count of live heap bytes, to bound what verify allocates ----

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + n;
        live.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        shrank(l.size());
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            shrank(l.size());
            grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns the most heap it held at once on this thread.
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

// ---- helpers ----

fn verify(zip: &[u8]) -> Result<aetheris_proof::VerifyReport, EvidenceError> {
    aetheris_proof::verify(zip, &[key().public_key()])
}

/// Refused, with one line of explanation.
#[track_caller]
fn refused(zip: &[u8]) -> EvidenceError {
    let e = verify(zip).expect_err("a hostile archive was accepted");
    let msg = e.to_string();
    assert!(
        !msg.contains('\n') && !msg.is_empty(),
        "not one line: {msg:?}"
    );
    e
}

#[track_caller]
fn refused_as_archive(zip: &[u8], says: &str) {
    let e = refused(zip);
    assert!(
        matches!(e, EvidenceError::Archive(_)) && e.to_string().contains(says),
        "expected an archive error saying {says:?}, got: {e}"
    );
}

fn good() -> PackageFiles {
    files_of(&fixture().package(&[]))
}

/// A zip of these entries, as given (names, contents, methods), by the zip crate.
fn zip_with(entries: &[(&str, &[u8], CompressionMethod)]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data, method) in entries {
        let o = SimpleFileOptions::default().compression_method(*method);
        w.start_file(*name, o).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The package's six entries with `name` swapped for (`new_name`, `data`).
fn replacing(name: &str, new_name: &str, data: &[u8]) -> Vec<u8> {
    let files = good();
    let entries: Vec<(&str, &[u8], CompressionMethod)> = FILES
        .iter()
        .map(|f| {
            if *f == name {
                (new_name, data, CompressionMethod::Deflated)
            } else {
                (
                    *f,
                    files.get(f).unwrap().as_slice(),
                    CompressionMethod::Deflated,
                )
            }
        })
        .collect();
    zip_with(&entries)
}

/// Offsets of every central directory header and every local header.
fn headers(zip: &[u8]) -> (Vec<usize>, Vec<usize>) {
    let find = |sig: [u8; 4]| {
        zip.windows(4)
            .enumerate()
            .filter(|(_, w)| *w == sig)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    (
        find([0x50, 0x4b, 0x01, 0x02]),
        find([0x50, 0x4b, 0x03, 0x04]),
    )
}

fn put_u16(zip: &mut [u8], at: usize, v: u16) {
    zip[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(zip: &mut [u8], at: usize, v: u32) {
    zip[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

// ---- the cases ----

#[test]
fn garbage_truncated_and_padded_archives_are_refused() {
    refused_as_archive(b"", "not a zip");
    refused_as_archive(b"PK\x05\x06", "not a zip");
    refused_as_archive(&[0xAB; 4096], "not a zip");
    let zip = fixture().package(&[]);
    for len in 0..zip.len() {
        let e = refused(&zip[..len]);
        assert!(
            matches!(e, EvidenceError::Archive(_)),
            "truncated to {len}: {e}"
        );
    }
    let mut padded = zip.clone();
    padded.extend_from_slice(b"trailing bytes");
    refused_as_archive(&padded, "not a zip");
    let mut prefixed = b"#!/bin/sh\nexit 0\n".to_vec();
    prefixed.extend_from_slice(&zip);
    refused_as_archive(&prefixed, "central directory");
    // A trailing archive comment.
    let mut commented = zip.clone();
    let n = commented.len();
    put_u16(&mut commented, n - 2, 3);
    commented.extend_from_slice(b"hi!");
    refused_as_archive(&commented, "not a zip");
}

#[test]
fn a_zip_bomb_by_ratio_is_refused_before_it_expands() {
    let bomb = vec![0u8; 64 << 20];
    let zip = replacing("events.jsonl", "events.jsonl", &bomb);
    drop(bomb);
    assert!(zip.len() < 1 << 20, "the bomb compresses: {}", zip.len());
    let (e, peak) = peak_heap(|| refused(&zip));
    assert!(e.to_string().contains("200:1"), "{e}");
    assert!(
        peak < 4 << 20,
        "verify held {peak} bytes refusing a 64 MiB bomb"
    );
}

#[test]
fn a_zip_bomb_with_lying_sizes_is_cut_off_at_the_declared_size() {
    let bomb = vec![b'a'; 32 << 20];
    let mut zip = replacing("events.jsonl", "events.jsonl", &bomb);
    drop(bomb);
    // Claim 1,000 bytes uncompressed in both headers: within every cap.
    let (cd, local) = headers(&zip);
    put_u32(&mut zip, cd[0] + 24, 1000);
    put_u32(&mut zip, local[0] + 22, 1000);
    let (e, peak) = peak_heap(|| refused(&zip));
    assert!(matches!(e, EvidenceError::Archive(_)), "{e}");
    assert!(
        peak < 4 << 20,
        "verify held {peak} bytes on a lying 32 MiB entry"
    );
}

#[test]
fn zip_bombs_by_entry_count_are_refused_from_the_end_record() {
    let files = good();
    let mut entries: Vec<(String, Vec<u8>)> = FILES
        .iter()
        .map(|f| (f.to_string(), files.get(f).unwrap().clone()))
        .collect();
    entries.extend((0..11).map(|i| (format!("x{i}"), Vec::new())));
    let refs: Vec<(&str, &[u8], CompressionMethod)> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice(), CompressionMethod::Stored))
        .collect();
    refused_as_archive(&zip_with(&refs), "17 entries");

    let names: Vec<String> = (0..60_000).map(|i| format!("{i}")).collect();
    let many: Vec<(&str, &[u8], CompressionMethod)> = names
        .iter()
        .map(|n| (n.as_str(), &b""[..], CompressionMethod::Stored))
        .collect();
    let zip = zip_with(&many);
    let (e, peak) = peak_heap(|| refused(&zip));
    assert!(e.to_string().contains("60000 entries"), "{e}");
    assert!(
        peak < 1 << 20,
        "verify held {peak} bytes refusing 60,000 entries"
    );
}

#[test]
fn entries_over_the_caps_are_refused_before_reading() {
    // Declares 300 MiB uncompressed (over the 256 MiB cap per file).
    let mut zip = fixture().package(&[]);
    let (cd, _) = headers(&zip);
    put_u32(&mut zip, cd[0] + 24, 300 << 20);
    let (e, peak) = peak_heap(|| refused(&zip));
    assert!(e.to_string().contains("cap per file"), "{e}");
    assert!(peak < 1 << 20);

    let zip = fixture().package(&[]);
    let k = [key().public_key()];
    let tight = |l: Limits| aetheris_proof::evidence::verify_with_limits(&zip, &k, &l).unwrap_err();
    let d = Limits::default();
    assert!(tight(Limits {
        max_entry_bytes: 1024,
        ..d
    })
    .to_string()
    .contains("cap per file"));
    assert!(tight(Limits {
        max_total_bytes: 4096,
        ..d
    })
    .to_string()
    .contains("in all"));
    assert!(tight(Limits {
        max_archive_bytes: 1000,
        ..d
    })
    .to_string()
    .contains("cap on a package"));
    assert!(tight(Limits {
        max_entries: 5,
        ..d
    })
    .to_string()
    .contains("entries"));
    assert!(tight(Limits {
        max_ratio: 1,
        ratio_free_bytes: 0,
        ..d
    })
    .to_string()
    .contains("1:1"));
}

#[test]
fn foreign_names_paths_and_duplicates_are_refused() {
    let data = good().events;
    for name in [
        "../events.jsonl",
        "/etc/events.jsonl",
        "a/../events.jsonl",
        "./events.jsonl",
        "events.jsonl/",
        "C:\\events.jsonl",
        "EVENTS.JSONL",
        "events.jsonl\u{0}",
    ] {
        refused_as_archive(
            &replacing("events.jsonl", name, &data),
            "not one of the package files",
        );
    }
    // Seven entries, the last renamed (in both headers) to a name already present.
    let files = good();
    let mut entries: Vec<(&str, &[u8], CompressionMethod)> = FILES
        .iter()
        .map(|f| {
            (
                *f,
                files.get(f).unwrap().as_slice(),
                CompressionMethod::Stored,
            )
        })
        .collect();
    entries.push(("events.jsonX", &files.events, CompressionMethod::Stored));
    let mut zip = zip_with(&entries);
    let at: Vec<usize> = zip
        .windows(12)
        .enumerate()
        .filter(|(_, w)| *w == b"events.jsonX")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 2);
    for i in at {
        zip[i + 11] = b'l';
    }
    refused_as_archive(&zip, "duplicate");

    // One missing.
    let five: Vec<(&str, &[u8], CompressionMethod)> = entries[..5].to_vec();
    refused_as_archive(&zip_with(&five), "envelope.json is missing");
}

#[test]
fn non_utf8_names_and_contents_are_refused() {
    let mut zip = fixture().package(&[]);
    let (cd, _) = headers(&zip);
    // The name of the fourth entry (job.json) in the central directory: "job.js\xffn".
    let name_at = cd[3] + 46;
    assert_eq!(&zip[name_at..name_at + 8], b"job.json");
    zip[name_at + 6] = 0xff;
    refused_as_archive(&zip, "not UTF-8");

    // Contents a signer vouched for but that are not text: located, not a crash.
    for (file, locate) in [
        ("events.jsonl", Some(1u64)),
        ("manifest.json", None),
        ("ledger.json", None),
        ("approvals.json", None),
        ("job.json", None),
    ] {
        let mut files = good();
        let data = files.get_mut(file).unwrap();
        let at = data.iter().position(|b| *b == b':').unwrap() + 2;
        data[at] = 0xff;
        resign(&mut files, &key());
        let e = refused(&zip_of(&files));
        match locate {
            Some(seq) => assert_eq!(e.failing_seq(), Some(seq), "{e}"),
            None => assert_eq!(e.failing_file(), Some(file), "{e}"),
        }
    }
}

#[test]
fn unsupported_and_encrypted_entries_are_refused() {
    let zip = fixture().package(&[]);
    let (cd, local) = headers(&zip);
    let mut bzip = zip.clone();
    put_u16(&mut bzip, cd[0] + 10, 12);
    put_u16(&mut bzip, local[0] + 8, 12);
    refused_as_archive(&bzip, "compression method");

    let mut encrypted = zip.clone();
    encrypted[cd[0] + 8] |= 1;
    encrypted[local[0] + 6] |= 1;
    refused(&encrypted);
}

fn with_envelope(env: &Envelope) -> Vec<u8> {
    let mut files = good();
    files.envelope = [serde_json::to_vec_pretty(env).unwrap(), b"\n".to_vec()].concat();
    zip_of(&files)
}

#[test]
fn envelopes_with_zero_or_two_signatures_or_another_type_are_refused() {
    let files = good();
    let env: Envelope = serde_json::from_slice(&files.envelope).unwrap();

    let mut none = env.clone();
    none.signatures.clear();
    assert!(refused(&with_envelope(&none))
        .to_string()
        .contains("0 signatures"));

    let mut two = env.clone();
    two.signatures.push(two.signatures[0].clone());
    assert!(refused(&with_envelope(&two))
        .to_string()
        .contains("2 signatures"));

    // A second, valid signature by another key: still not exactly one.
    let mut cosigned = env.clone();
    let payload = base64_decode(&env.payload);
    let sig = other_key().sign(&pae(&env.payload_type, &payload));
    cosigned.signatures.push(EnvelopeSignature {
        keyid: other_key().keyid(),
        sig: {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(sig)
        },
    });
    assert!(refused(&with_envelope(&cosigned))
        .to_string()
        .contains("2 signatures"));

    // Another payload type, even correctly signed for it.
    let mut typed = env.clone();
    typed.payload_type = "application/json".into();
    let sig = key().sign(&pae("application/json", &payload));
    typed.signatures[0].sig = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(sig)
    };
    assert!(refused(&with_envelope(&typed))
        .to_string()
        .contains("payloadType"));

    for junk in [
        &b""[..],
        b"null",
        b"[]",
        b"{\"payload\":1}",
        &[b'['; 100_000][..],
    ] {
        let mut f = files.clone();
        f.envelope = junk.to_vec();
        assert_eq!(refused(&zip_of(&f)).failing_file(), Some("envelope.json"));
    }
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    let mut files = good();
    let mut deep = b"{\"seq\":1,\"payload\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 200_000));
    deep.extend(std::iter::repeat_n(b']', 200_000));
    deep.extend_from_slice(b"}\n");
    files.events = deep;
    resign(&mut files, &key());
    assert_eq!(refused(&zip_of(&files)).failing_seq(), Some(1));
}

#[test]
fn stored_entries_in_another_order_are_accepted() {
    let files = good();
    let mut entries: Vec<(&str, &[u8], CompressionMethod)> = FILES
        .iter()
        .map(|f| {
            (
                *f,
                files.get(f).unwrap().as_slice(),
                CompressionMethod::Stored,
            )
        })
        .collect();
    entries.reverse();
    let report = verify(&zip_with(&entries)).unwrap();
    assert_eq!(report.verdict, "valid");
}
