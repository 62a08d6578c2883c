//! Transparency logs: RFC 9162 proofs for random trees (every inclusion and consistency
//! proof verifies, every corrupted one fails), agreement with an independent Python
//! implementation of the RFC, signed checkpoints (round trip, any byte changed fails), and
//! the point of it all: a job deleted or rewritten after an auditor kept a checkpoint
//! (or a package, which carries one) is detected by the consistency check.

mod common;

use aetheris_proof::checkpoint::{
    job_leaf_data, job_leaf_hash, verify_consistency, Checkpoint, ConsistencyProof, JOB_LEAF_TAG,
};
use aetheris_proof::merkle::{self, Hash};
use aetheris_proof::{EvidenceError, SigningKey};
use aetheris_runtime::JobId;
use common::*;
use proptest::prelude::*;
use std::process::Command;

fn leaves(n: usize, salt: u8) -> Vec<Hash> {
    (0..n)
        .map(|i| merkle::leaf_hash(&[salt, (i >> 8) as u8, i as u8]))
        .collect()
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut h = *h;
    h[bit / 8 % 32] ^= 1 << (bit % 8);
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_inclusion_proof_verifies_and_any_flipped_bit_fails(n in 1usize..300, bit in 0usize..256, salt in any::<u8>()) {
        let tree = leaves(n, salt);
        let root = merkle::root(&tree);
        for i in 0..n as u64 {
            let proof = merkle::inclusion_proof(&tree, i, n as u64).unwrap();
            let leaf = tree[i as usize];
            prop_assert!(merkle::verify_inclusion(&leaf, i, n as u64, &proof, &root));
            prop_assert!(!merkle::verify_inclusion(&flip(&leaf, bit), i, n as u64, &proof, &root));
            prop_assert!(!merkle::verify_inclusion(&leaf, i, n as u64, &proof, &flip(&root, bit)));
            for k in 0..proof.len() {
                let mut bad = proof.clone();
                bad[k] = flip(&bad[k], bit);
                prop_assert!(!merkle::verify_inclusion(&leaf, i, n as u64, &bad, &root));
            }
            if n > 1 {
                let j = (i + 1) % n as u64;
                prop_assert!(!merkle::verify_inclusion(&leaf, j, n as u64, &proof, &root) || tree[j as usize] == leaf);
            }
            if !proof.is_empty() {
                prop_assert!(!merkle::verify_inclusion(&leaf, i, n as u64, &proof[1..], &root));
            }
            let mut longer = proof.clone();
            longer.push(root);
            prop_assert!(!merkle::verify_inclusion(&leaf, i, n as u64, &longer, &root));
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_any_flipped_bit_fails(n in 1usize..200, bit in 0usize..256, salt in any::<u8>()) {
        let tree = leaves(n, salt);
        let roots: Vec<Hash> = (0..=n).map(|m| merkle::root(&tree[..m])).collect();
        let new = roots[n];
        for m in 0..=n {
            let proof = merkle::consistency_proof(&tree, m as u64, n as u64).unwrap();
            let old = roots[m];
            prop_assert!(merkle::verify_consistency(m as u64, n as u64, &old, &new, &proof), "{} -> {}", m, n);
            if m == n || m == 0 {
                prop_assert!(proof.is_empty());
            }
            prop_assert!(!merkle::verify_consistency(m as u64, n as u64, &flip(&old, bit), &new, &proof));
            // (From the empty tree every tree is an extension: only the old head is checked.)
            if m > 0 {
                prop_assert!(!merkle::verify_consistency(m as u64, n as u64, &old, &flip(&new, bit), &proof));
            }
            for k in 0..proof.len() {
                let mut bad = proof.clone();
                bad[k] = flip(&bad[k], bit);
                prop_assert!(!merkle::verify_consistency(m as u64, n as u64, &old, &new, &bad), "{} -> {} hash {}", m, n, k);
            }
            if 0 < m && m < n {
                prop_assert!(!merkle::verify_consistency(m as u64, n as u64, &old, &new, &proof[1..]));
                // The heads of other sizes. (The sizes themselves are bound to the heads
                // by the signed checkpoint, not by the proof.)
                prop_assert!(!merkle::verify_consistency(m as u64, n as u64, &old, &roots[n - 1], &proof));
                prop_assert!(!merkle::verify_consistency(m as u64, n as u64, &roots[m - 1], &new, &proof));
            }
        }
    }
}

/// RFC 9162 §2.1 written again in Python from the RFC's text, run on the same leaves:
/// heads, inclusion paths and consistency proofs must agree with ours byte for byte.
#[test]
fn an_independent_python_implementation_agrees() {
    const PY: &str = r#"
import hashlib, json, sys
def H(b): return hashlib.sha256(b).digest()
def leaf(d): return H(b"\x00" + d)
def node(l, r): return H(b"\x01" + l + r)
def k_of(n):
    k = 1
    while k * 2 < n: k *= 2
    return k
def mth(D):
    if len(D) == 0: return H(b"")
    if len(D) == 1: return leaf(D[0])
    k = k_of(len(D)); return node(mth(D[:k]), mth(D[k:]))
def path(m, D):
    if len(D) <= 1: return []
    k = k_of(len(D))
    return path(m, D[:k]) + [mth(D[k:])] if m < k else path(m - k, D[k:]) + [mth(D[:k])]
def subproof(m, D, b):
    n = len(D)
    if m == n: return [] if b else [mth(D)]
    k = k_of(n)
    return subproof(m, D[:k], b) + [mth(D[k:])] if m <= k else subproof(m - k, D[k:], False) + [mth(D[:k])]
N = 40
D = [bytes([7, i]) for i in range(N)]
out = {"roots": [mth(D[:n]).hex() for n in range(N + 1)],
       "paths": {f"{m},{n}": [h.hex() for h in path(m, D[:n])] for n in range(1, N + 1) for m in range(n)},
       "proofs": {f"{m},{n}": [h.hex() for h in subproof(m, D[:n], True)] for n in range(1, N + 1) for m in range(1, n)}}
json.dump(out, sys.stdout)
"#;
    let out = Command::new("python3")
        .args(["-c", PY])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tree: Vec<Hash> = (0..40u8).map(|i| merkle::leaf_hash(&[7, i])).collect();
    let hexes = |v: Vec<Hash>| v.iter().map(hex::encode).collect::<Vec<_>>();
    let mut compared = 0;
    for n in 0..=40usize {
        assert_eq!(
            want["roots"][n],
            hex::encode(merkle::root(&tree[..n])),
            "root {n}"
        );
        for m in 0..n {
            let ours = hexes(merkle::inclusion_proof(&tree, m as u64, n as u64).unwrap());
            assert_eq!(
                want["paths"][format!("{m},{n}")],
                serde_json::json!(ours),
                "path {m},{n}"
            );
            compared += 1;
            if m > 0 {
                let ours = hexes(merkle::consistency_proof(&tree, m as u64, n as u64).unwrap());
                assert_eq!(
                    want["proofs"][format!("{m},{n}")],
                    serde_json::json!(ours),
                    "proof {m},{n}"
                );
                compared += 1;
            }
        }
    }
    println!("proofs compared with the Python implementation: {compared}");
}

#[test]
fn the_job_leaf_layout_is_fixed() {
    let job = JobId::from_bytes(*b"0123456789abcdef");
    let data = job_leaf_data(job, 0x0102, &[0xee; 32]);
    let mut want = JOB_LEAF_TAG.to_vec();
    want.extend_from_slice(b"0123456789abcdef");
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
    want.extend_from_slice(&[0xee; 32]);
    assert_eq!(data.to_vec(), want);
    assert_eq!(
        job_leaf_hash(job, 0x0102, &[0xee; 32]),
        merkle::leaf_hash(&want)
    );
}

#[test]
fn checkpoints_round_trip_and_any_changed_byte_fails() {
    let tree = leaves(13, 1);
    let cp = Checkpoint::for_tenant("acme", 13, merkle::root(&tree), 1_764_000_000_123);
    let text = cp.sign(&key()).unwrap();
    assert!(text.starts_with("aetheris/tenant/acme\n13\n"), "{text}");
    assert!(text.contains("\ntime 1764000000123\n\n\u{2014} aetheris-evidence "));
    assert_eq!(text, cp.sign(&key()).unwrap(), "deterministic");
    let v = Checkpoint::verify(&text, &[other_key().public_key(), key().public_key()]).unwrap();
    assert_eq!(v.checkpoint, cp);
    assert_eq!(v.signer_keyid, key().keyid());
    assert!(Checkpoint::verify(&text, &[other_key().public_key()]).is_err());
    let bytes = text.as_bytes();
    for pos in 0..bytes.len() {
        for x in [0x01u8, 0x20, 0x80] {
            let mut b = bytes.to_vec();
            b[pos] ^= x;
            let Ok(t) = String::from_utf8(b) else {
                continue;
            };
            assert!(
                Checkpoint::verify(&t, &[key().public_key()]).is_err(),
                "byte {pos} ^ {x:#x} unnoticed: {t}"
            );
        }
    }
    // A second signature by an unknown signer is ignored; ours still counts.
    let cosigned = format!("{text}\u{2014} someone-else AAAA\n");
    assert!(Checkpoint::verify(&cosigned, &[key().public_key()]).is_ok());
    assert!(matches!(
        Checkpoint::verify(&"x".repeat(5000), &[key().public_key()]),
        Err(EvidenceError::Checkpoint(_))
    ));
}

fn signed(tenant: &str, tree: &[Hash], size: usize, k: &SigningKey) -> String {
    Checkpoint::for_tenant(
        tenant,
        size as u64,
        merkle::root(&tree[..size]),
        size as i64,
    )
    .sign(k)
    .unwrap()
}

#[test]
fn a_log_that_only_grew_is_consistent_with_every_older_checkpoint() {
    let tree = leaves(40, 2);
    let pk = [key().public_key()];
    for old in [0usize, 1, 2, 3, 7, 8, 9, 20, 39, 40] {
        for new in old..=40 {
            let proof = ConsistencyProof::prove(&tree, old as u64, new as u64).unwrap();
            let r = verify_consistency(
                &signed("acme", &tree, old, &key()),
                &signed("acme", &tree, new, &key()),
                &proof,
                &pk,
            )
            .unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));
            assert_eq!((r.old_size, r.new_size), (old as u64, new as u64));
        }
    }
    // Shrinking, another tenant's log, a proof for other sizes: refused.
    let proof = ConsistencyProof::prove(&tree, 10, 20).unwrap();
    let old = signed("acme", &tree, 10, &key());
    assert!(verify_consistency(&old, &signed("globex", &tree, 20, &key()), &proof, &pk).is_err());
    assert!(verify_consistency(&old, &signed("acme", &tree, 21, &key()), &proof, &pk).is_err());
    let back = ConsistencyProof {
        old_size: 20,
        new_size: 10,
        proof: vec![],
    };
    assert!(verify_consistency(&signed("acme", &tree, 20, &key()), &old, &back, &pk).is_err());
    let json = serde_json::to_string(&proof).unwrap();
    assert_eq!(
        serde_json::from_str::<ConsistencyProof>(&json).unwrap(),
        proof
    );
}

#[test]
fn a_job_deleted_or_rewritten_after_a_checkpoint_is_detected() {
    let tree = leaves(24, 3);
    let pk = [key().public_key()];
    let kept = 16usize; // the auditor kept the checkpoint at size 16
    let old = signed("acme", &tree, kept, &key());
    let mut detected = 0;
    for victim in 0..kept {
        // Rewritten: the job's leaf replaced (its events changed after the fact).
        let mut rewritten = tree.clone();
        rewritten[victim] = merkle::leaf_hash(b"a different history");
        // Deleted: the leaf removed, later jobs shifted down.
        let mut deleted = tree.clone();
        deleted.remove(victim);
        for forged in [rewritten, deleted] {
            for new in kept..=forged.len() {
                let proof = ConsistencyProof::prove(&forged, kept as u64, new as u64).unwrap();
                let e =
                    verify_consistency(&old, &signed("acme", &forged, new, &key()), &proof, &pk)
                        .expect_err("a rewritten log passed");
                assert!(e.to_string().contains("not a prefix"), "{e}");
                detected += 1;
            }
        }
    }
    println!("forged logs detected: {detected}");
}

#[test]
fn a_package_checkpoint_is_consistent_with_later_ones_and_catches_a_later_rewrite() {
    let f = fixture();
    let pk = [key().public_key()];
    let zip = f.package(&[]);
    let report = aetheris_proof::verify(&zip, &pk).unwrap();
    let cp = report.checkpoint.unwrap();
    assert_eq!(cp.tree_size, LEAF_INDEX + 1);
    let in_package = f.transparency.checkpoint.clone();
    // Later, the log grew: consistent.
    let later = signed(TENANT, &f.leaves, f.leaves.len(), &key());
    let proof = ConsistencyProof::prove(&f.leaves, cp.tree_size, f.leaves.len() as u64).unwrap();
    verify_consistency(&in_package, &later, &proof, &pk).unwrap();
    // Later, the job's leaf was rewritten: the package's checkpoint exposes it.
    let mut forged = f.leaves.clone();
    forged[LEAF_INDEX as usize] = job_leaf_hash(job_id(), 16, &[0; 32]);
    let forged_cp = signed(TENANT, &forged, forged.len(), &key());
    let proof = ConsistencyProof::prove(&forged, cp.tree_size, forged.len() as u64).unwrap();
    assert!(verify_consistency(&in_package, &forged_cp, &proof, &pk).is_err());
}
