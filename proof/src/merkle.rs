//! RFC 9162 §2.1 Merkle trees over SHA-256 (the Certificate Transparency v2 hashing, the
//! same as RFC 6962): leaf hash `SHA-256(0x00 ‖ data)`, node hash `SHA-256(0x01 ‖ left ‖
//! right)`, the tree head MTH of n leaves, inclusion proofs (§2.1.3) and consistency proofs
//! (§2.1.4), each generated and verified exactly as the RFC's algorithms say.
//!
//! Trees are given as their leaf hashes in order; a tree of size n is the first n of them.
//! Generation is O(n) hashing per proof (subtree roots are recomputed, not stored), which
//! is a few milliseconds for tens of thousands of leaves. Invariant: a proof verifies only
//! for the leaf, index and sizes it was made for (the property tests flip every byte).

use crate::error::EvidenceError;
use ring::digest::{Context, SHA256};

/// A SHA-256 digest: a leaf hash, node hash or tree head.
pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut c = Context::new(&SHA256);
    for p in parts {
        c.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// The hash of a leaf with this data: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0x00], data])
}

/// The hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The head of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// The largest power of two smaller than `n` (`n >= 2`): where MTH splits a tree.
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// `MTH(D[n])` of the tree whose leaf hashes are `leaves`.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

fn size_of(leaves: &[Hash], size: u64) -> Result<&[Hash], EvidenceError> {
    usize::try_from(size)
        .ok()
        .and_then(|n| leaves.get(..n))
        .ok_or_else(|| {
            EvidenceError::Merkle(format!(
                "tree size {size} is larger than the {} leaves given",
                leaves.len()
            ))
        })
}

/// The tree head of the first `size` leaves.
pub fn root_at(leaves: &[Hash], size: u64) -> Result<Hash, EvidenceError> {
    Ok(root(size_of(leaves, size)?))
}

/// `PATH(index, D[size])`: the audit path of leaf `index` in the tree of the first `size`
/// leaves (RFC 9162 §2.1.3.1).
pub fn inclusion_proof(leaves: &[Hash], index: u64, size: u64) -> Result<Vec<Hash>, EvidenceError> {
    let tree = size_of(leaves, size)?;
    if index >= size {
        return Err(EvidenceError::Merkle(format!(
            "leaf {index} is not in a tree of size {size}"
        )));
    }
    let mut proof = Vec::new();
    path(index as usize, tree, &mut proof);
    Ok(proof)
}

fn path(m: usize, tree: &[Hash], out: &mut Vec<Hash>) {
    let n = tree.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &tree[..k], out);
        out.push(root(&tree[k..]));
    } else {
        path(m - k, &tree[k..], out);
        out.push(root(&tree[..k]));
    }
}

/// Verifies that `leaf` is leaf `index` of the tree of size `size` with head `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// `PROOF(old_size, D[new_size])`: that the tree of the first `old_size` leaves is a prefix
/// of the tree of the first `new_size` (RFC 9162 §2.1.4.1). Empty when the sizes are
/// equal or the old tree is empty (every tree extends the empty one).
pub fn consistency_proof(
    leaves: &[Hash],
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, EvidenceError> {
    let tree = size_of(leaves, new_size)?;
    if old_size > new_size {
        return Err(EvidenceError::Merkle(format!(
            "old size {old_size} is larger than new size {new_size}"
        )));
    }
    let mut proof = Vec::new();
    if old_size > 0 && old_size < new_size {
        subproof(old_size as usize, tree, true, &mut proof);
    }
    Ok(proof)
}

fn subproof(m: usize, tree: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = tree.len();
    if m == n {
        if !complete {
            out.push(root(tree));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &tree[..k], complete, out);
        out.push(root(&tree[k..]));
    } else {
        subproof(m - k, &tree[k..], false, out);
        out.push(root(&tree[..k]));
    }
}

/// Verifies that the tree of size `old_size` with head `old_root` is a prefix of the tree
/// of size `new_size` with head `new_root` (RFC 9162 §2.1.4.2; equal sizes need equal
/// heads and an empty proof; the empty tree is a prefix of every tree).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *old_root && sr == *new_root && snode == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The Certificate Transparency reference tree (RFC 6962 test data, shared by the
    /// C++, Go and Python CT implementations): 8 leaves and the head at every size.
    fn ct_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|d| leaf_hash(&hex::decode(d).unwrap()))
        .collect()
    }

    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn heads_match_the_ct_reference_at_every_size() {
        let leaves = ct_leaves();
        for (n, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(root(&leaves[..n])), *want, "size {n}");
        }
    }

    #[test]
    fn proofs_match_the_ct_reference() {
        let leaves = ct_leaves();
        let root8 = h(CT_ROOTS[8]);
        let inclusion = [
            (
                0u64,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                vec![
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, want) in inclusion {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(inclusion_proof(&leaves, index, 8).unwrap(), want);
            assert!(verify_inclusion(
                &leaves[index as usize],
                index,
                8,
                &want,
                &root8
            ));
        }
        let consistency = [
            (
                2u64,
                vec![
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, want) in consistency {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(consistency_proof(&leaves, old, 8).unwrap(), want);
            assert!(verify_consistency(
                old,
                8,
                &h(CT_ROOTS[old as usize]),
                &root8,
                &want
            ));
        }
    }

    #[test]
    fn out_of_range_requests_are_errors_not_panics() {
        let leaves = ct_leaves();
        assert!(inclusion_proof(&leaves, 8, 8).is_err());
        assert!(inclusion_proof(&leaves, 0, 9).is_err());
        assert!(consistency_proof(&leaves, 5, 3).is_err());
        assert!(consistency_proof(&leaves, 1, 9).is_err());
        assert!(root_at(&leaves, 9).is_err());
        assert!(!verify_inclusion(&leaves[0], 8, 8, &[], &leaves[0]));
        assert!(!verify_consistency(8, 6, &leaves[0], &leaves[0], &[]));
    }
}
