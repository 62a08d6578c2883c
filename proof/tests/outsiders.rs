//! Independent verification: tools that share no code with us check our packages and
//! agree with our verifier. OpenSSL 3 checks the Ed25519 signature over DSSE's PAE bytes
//! rebuilt from `envelope.json`; the OpenSSL recipe printed in docs/evidence.md is run
//! exactly as written; `verify_package.py` (Python's standard library, plus
//! securesystemslib for the DSSE signature when installed) recomputes digests and the
//! whole hash chain. For good, redacted and tampered packages, all give the same verdict.

mod common;

use aetheris_proof::evidence::PackageFiles;
use aetheris_proof::keys::public_key_file;
use aetheris_proof::{RedactionRule, SigningKey};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// PEM of an Ed25519 public key, assembled here from RFC 8410 (not with our helper).
fn pem(public_key: &[u8; 32]) -> String {
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(public_key);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(der)
    )
}

fn openssl_verify(dir: &Path, public_key: &[u8; 32], pae: &[u8], sig: &[u8]) -> bool {
    std::fs::write(dir.join("pub.pem"), pem(public_key)).unwrap();
    std::fs::write(dir.join("pae.bin"), pae).unwrap();
    std::fs::write(dir.join("sig.bin"), sig).unwrap();
    let out = run(Command::new("openssl")
        .current_dir(dir)
        .args([
            "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin",
        ])
        .args(["-in", "pae.bin", "-sigfile", "sig.bin"]));
    let ok = out.status.success();
    assert_eq!(
        ok,
        String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully"),
        "{out:?}"
    );
    ok
}

#[test]
fn openssl_verifies_the_signature_over_pae_rebuilt_from_envelope_json() {
    let dir = tempfile::tempdir().unwrap();
    let files = files_of(&fixture().package(&[]));
    // PAE rebuilt from the JSON with nothing of ours but the base64 decoder.
    let env: serde_json::Value = serde_json::from_slice(&files.envelope).unwrap();
    let payload = STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
    let ptype = env["payloadType"].as_str().unwrap();
    let mut pae = format!("DSSEv1 {} {} {} ", ptype.len(), ptype, payload.len()).into_bytes();
    pae.extend_from_slice(&payload);
    let sig = STANDARD
        .decode(env["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    assert_eq!(env["signatures"][0]["keyid"], key().keyid());

    assert!(openssl_verify(dir.path(), &key().public_key(), &pae, &sig));
    let mut flipped = pae.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    assert!(!openssl_verify(
        dir.path(),
        &key().public_key(),
        &flipped,
        &sig
    ));
    assert!(!openssl_verify(
        dir.path(),
        &other_key().public_key(),
        &pae,
        &sig
    ));
    let mut bad_sig = sig.clone();
    bad_sig[0] ^= 0x80;
    assert!(!openssl_verify(
        dir.path(),
        &key().public_key(),
        &pae,
        &bad_sig
    ));
}

/// The shell block after the `openssl-recipe` marker in docs/evidence.md.
fn documented_recipe() -> String {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/evidence.md");
    let text = std::fs::read_to_string(&docs).unwrap();
    let after = text
        .split_once("<!-- openssl-recipe")
        .expect("docs/evidence.md has the openssl-recipe marker")
        .1;
    let block = after.split_once("```sh\n").unwrap().1;
    block.split_once("```").unwrap().0.to_string()
}

/// The documented recipe's verdict on `zip` with `public_key`: (success, output).
fn recipe_verdict(zip: &[u8], public_key: &[u8; 32]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.evidence.zip"), zip).unwrap();
    std::fs::write(dir.path().join("evidence.pub"), public_key_file(public_key)).unwrap();
    let out = run(Command::new("bash").current_dir(dir.path()).args([
        "-euo",
        "pipefail",
        "-c",
        &documented_recipe(),
    ]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn python_verdict(zip: &[u8], public_key: &[u8; 32]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("job.evidence.zip");
    std::fs::write(&zip_path, zip).unwrap();
    let pub_path = dir.path().join("evidence.pub");
    std::fs::write(&pub_path, public_key_file(public_key)).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/verify_package.py");
    let out = run(Command::new("python3")
        .arg(script)
        .arg(&zip_path)
        .arg(&pub_path));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn securesystemslib_installed() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import securesystemslib.dsse, securesystemslib.signer",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_documented_openssl_recipe_verifies_a_package() {
    let zip = fixture().package(&[]);
    let (ok, out) = recipe_verdict(&zip, &key().public_key());
    assert!(ok, "{out}");
    assert!(out.contains("Signature Verified Successfully"), "{out}");
    for f in [
        "events.jsonl",
        "ledger.json",
        "approvals.json",
        "job.json",
        "manifest.json",
    ] {
        assert!(out.contains(&format!("{f}: OK")), "{f}: {out}");
    }
}

/// Packages that must pass, and tampered ones that must fail, for every verifier.
fn variants() -> Vec<(&'static str, Vec<u8>, bool)> {
    let f = fixture();
    let good = f.package(&[]);
    let redacted = f.package(&[
        RedactionRule::requested("steps.fetch.output", "pii").unwrap(),
        RedactionRule::requested("input", "pii").unwrap(),
    ]);
    let edit = |change: &dyn Fn(&mut PackageFiles)| {
        let mut files = files_of(&good);
        change(&mut files);
        zip_of(&files)
    };
    let replace = |hay: &mut Vec<u8>, from: &str, to: &str| {
        let s = String::from_utf8(hay.clone()).unwrap();
        assert!(s.contains(from), "{from}");
        *hay = s.replacen(from, to, 1).into_bytes();
    };
    let foreign_key = SigningKey::from_seed([0x33; 32]).unwrap();
    vec![
        ("good", good.clone(), true),
        ("redacted", redacted, true),
        (
            "an event payload changed",
            edit(&|p| replace(&mut p.events, "\"amount\":1250", "\"amount\":9250")),
            false,
        ),
        (
            "an event line deleted",
            edit(&|p| {
                let lines: Vec<&[u8]> = p.events.split_inclusive(|b| *b == b'\n').collect();
                p.events = [&lines[..4], &lines[5..]].concat().concat();
            }),
            false,
        ),
        (
            "the ledger changed",
            edit(&|p| replace(&mut p.ledger, "\"confirmed\"", "\"succeeded\"")),
            false,
        ),
        (
            "an approver changed",
            edit(&|p| replace(&mut p.approvals, "bob@example.com", "eve@example.com")),
            false,
        ),
        (
            "the manifest's tenant changed",
            edit(&|p| {
                replace(
                    &mut p.manifest,
                    "\"tenant\": \"acme\"",
                    "\"tenant\": \"acne\"",
                )
            }),
            false,
        ),
        (
            "re-signed by a foreign key",
            edit(&|p| {
                replace(&mut p.approvals, "bob@example.com", "eve@example.com");
                resign(p, &foreign_key);
            }),
            false,
        ),
    ]
}

#[test]
fn our_verify_openssl_and_python_agree_on_good_and_tampered_packages() {
    let with_sslib = securesystemslib_installed();
    if !with_sslib {
        println!(
            "securesystemslib is not installed: verify_package.py checks digests and the chain \
             only (pip install securesystemslib to check the signature with it too)"
        );
    }
    let pk = key().public_key();
    for (name, zip, valid) in variants() {
        let ours = aetheris_proof::verify(&zip, &[pk]);
        assert_eq!(ours.is_ok(), valid, "{name}: ours said {ours:?}");
        let (openssl, out) = recipe_verdict(&zip, &pk);
        assert_eq!(openssl, valid, "{name}: the openssl recipe said:\n{out}");
        let (python, out) = python_verdict(&zip, &pk);
        if name == "re-signed by a foreign key" && !with_sslib {
            // Without securesystemslib the script checks no signature: the foreign
            // signer's digests are self-consistent, so only the signature catches it.
            continue;
        }
        assert_eq!(python, valid, "{name}: verify_package.py said:\n{out}");
        if valid && with_sslib {
            assert!(out.contains("verified by securesystemslib"), "{out}");
        }
    }
}
