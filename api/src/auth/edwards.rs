//! Checks of Ed25519 public keys that ring does not offer: whether 32 bytes encode a point
//! of edwards25519, and whether that point has small order (its order divides 8).
//!
//! Invariant kept here: no small-order key is ever used to verify. ring decodes a key as
//! RFC 8032 §5.1.3 allows (y taken mod p, the sign bit of a zero x ignored) and checks
//! `[S]B = R + [k]A` without the cofactor, so for a small-order key `A` a signature with
//! `S = 0` and `R = -[k]A` (one of 8 points) verifies for any message: anyone could
//! forge. (ed25519-dalek's `verify_strict`, used before, refused such keys itself.)
//!
//! The arithmetic is plain, variable-time modular arithmetic on four 64-bit limbs: it only
//! ever sees public keys. It runs at start-up (`AuthConfig::validate`, key decoding) and
//! before a key checks a token, where it costs about what ring's own decoding of the key
//! costs (one exponentiation), a small part of a signature check.

/// A field element mod p = 2^255 - 19: little-endian 64-bit limbs, always fully reduced.
type Fe = [u64; 4];

const P: Fe = [
    0xffff_ffff_ffff_ffed,
    u64::MAX,
    u64::MAX,
    0x7fff_ffff_ffff_ffff,
];
const ZERO: Fe = [0; 4];
const ONE: Fe = [1, 0, 0, 0];
/// The curve constant d = -121665/121666 mod p (RFC 8032 §5.1); a test recomputes it.
const D: Fe = [
    0x75eb_4dca_1359_78a3,
    0x0070_0a4d_4141_d8ab,
    0x8cc7_4079_7779_e898,
    0x5203_6cee_2b6f_fe73,
];
/// The y-coordinate of two of the four points of order 8 (the other two have -y):
/// 2707385501144840649318225287225658788936804267575313519463743609750303402022.
const Y_ORDER_8: Fe = [
    0xb027_b2c2_8f95_e826,
    0xf098_eff2_89f4_c345,
    0x3933_c6d3_05ac_dfd5,
    0x05fc_536d_8802_38b1,
];

/// True when `key` decodes to a point of edwards25519 the way ring (and ed25519-dalek)
/// decode it: y = the low 255 bits mod p, and a square root x of (y² - 1)/(d·y² + 1)
/// exists.
pub fn is_curve_point(key: &[u8; 32]) -> bool {
    let y = y_coordinate(key);
    let y2 = mul(&y, &y);
    let u = sub(&y2, &ONE);
    let v = add(&mul(&D, &y2), &ONE);
    // v is never 0 (-1/d is not a square), so u/v is a square exactly when u·v is one
    // (u·v = (u/v)·v²).
    is_square(&mul(&u, &v))
}

/// True when `key` decodes to one of the 8 points of order dividing 8 (their canonical
/// and non-canonical encodings alike): y ∈ {1, -1, 0, ±y₈}.
pub fn is_small_order(key: &[u8; 32]) -> bool {
    let y = y_coordinate(key);
    let minus_one = sub(&ZERO, &ONE);
    let minus_y8 = sub(&ZERO, &Y_ORDER_8);
    [ONE, minus_one, ZERO, Y_ORDER_8, minus_y8].contains(&y)
}

/// The y-coordinate of an encoded point: its low 255 bits, reduced mod p.
fn y_coordinate(key: &[u8; 32]) -> Fe {
    let mut y = ZERO;
    for (limb, chunk) in y.iter_mut().zip(key.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *limb = u64::from_le_bytes(b);
    }
    y[3] &= 0x7fff_ffff_ffff_ffff;
    reduce(y)
}

fn at_least(a: &Fe, b: &Fe) -> bool {
    for i in (0..4).rev() {
        if a[i] != b[i] {
            return a[i] > b[i];
        }
    }
    true
}

/// a - b for a >= b.
fn sub_limbs(a: &Fe, b: &Fe) -> Fe {
    let mut out = ZERO;
    let mut borrow = false;
    for i in 0..4 {
        let (d, b1) = a[i].overflowing_sub(b[i]);
        let (d, b2) = d.overflowing_sub(u64::from(borrow));
        out[i] = d;
        borrow = b1 || b2;
    }
    out
}

/// a + b for a + b < 2^256.
fn add_limbs(a: &Fe, b: &Fe) -> Fe {
    let mut out = ZERO;
    let mut carry = 0u128;
    for i in 0..4 {
        let s = u128::from(a[i]) + u128::from(b[i]) + carry;
        out[i] = s as u64;
        carry = s >> 64;
    }
    out
}

/// Any value below 2^256 (< 2p + 38) reduced mod p.
fn reduce(mut a: Fe) -> Fe {
    while at_least(&a, &P) {
        a = sub_limbs(&a, &P);
    }
    a
}

fn add(a: &Fe, b: &Fe) -> Fe {
    // Both are below p < 2^255, so the sum fits in 256 bits.
    reduce(add_limbs(a, b))
}

fn sub(a: &Fe, b: &Fe) -> Fe {
    if at_least(a, b) {
        sub_limbs(a, b)
    } else {
        sub_limbs(&add_limbs(a, &P), b)
    }
}

fn mul(a: &Fe, b: &Fe) -> Fe {
    let mut wide = [0u64; 8];
    for i in 0..4 {
        let mut carry = 0u128;
        for j in 0..4 {
            let t = u128::from(wide[i + j]) + u128::from(a[i]) * u128::from(b[j]) + carry;
            wide[i + j] = t as u64;
            carry = t >> 64;
        }
        wide[i + 4] = carry as u64;
    }
    // 2^256 = 2·2^255 ≡ 2·19 = 38 (mod p): fold the high half onto the low half, twice.
    let mut out = ZERO;
    let mut carry = 0u128;
    for i in 0..4 {
        let t = u128::from(wide[i]) + 38 * u128::from(wide[i + 4]) + carry;
        out[i] = t as u64;
        carry = t >> 64;
    }
    let mut extra = carry * 38;
    for limb in out.iter_mut() {
        let t = u128::from(*limb) + extra;
        *limb = t as u64;
        extra = t >> 64;
    }
    if extra != 0 {
        // Wrapped past 2^256: what is left is tiny, and 2^256 ≡ 38 once more.
        out[0] += 38;
    }
    reduce(out)
}

fn pow(base: &Fe, exponent: &Fe) -> Fe {
    let mut acc = ONE;
    for limb in exponent.iter().rev() {
        for bit in (0..64).rev() {
            acc = mul(&acc, &acc);
            if (limb >> bit) & 1 == 1 {
                acc = mul(&acc, base);
            }
        }
    }
    acc
}

/// Euler's criterion: a is a square mod p iff a = 0 or a^((p-1)/2) = 1.
fn is_square(a: &Fe) -> bool {
    const HALF_P_MINUS_1: Fe = [
        0xffff_ffff_ffff_fff6,
        u64::MAX,
        u64::MAX,
        0x3fff_ffff_ffff_ffff,
    ];
    *a == ZERO || pow(a, &HALF_P_MINUS_1) == ONE
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

    fn small(n: u64) -> Fe {
        [n, 0, 0, 0]
    }

    fn encode(y: &Fe, x_negative: bool) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(y) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out[31] |= u8::from(x_negative) << 7;
        out
    }

    /// Deterministic pseudo-random 32-byte strings (SHA-256 of a counter).
    fn sample(i: u32) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, &i.to_be_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    #[test]
    fn field_arithmetic_agrees_with_known_facts() {
        let p_minus_1 = sub(&ZERO, &ONE);
        let p_minus_2 = sub(&p_minus_1, &ONE);
        // Fermat: a^(p-1) = 1 for a ≠ 0, and a^(p-2) is a's inverse.
        for i in 0..8 {
            let a = y_coordinate(&sample(i));
            assert_eq!(pow(&a, &p_minus_1), ONE);
            assert_eq!(mul(&a, &pow(&a, &p_minus_2)), ONE);
        }
        // d = -121665/121666.
        assert_eq!(mul(&D, &small(121_666)), sub(&ZERO, &small(121_665)));
        // p ≡ 5 (mod 8): -1 is a square, 2 is not; d is not a square either.
        assert!(is_square(&p_minus_1));
        assert!(!is_square(&small(2)));
        assert!(!is_square(&D));
        // The largest product folds correctly: (p-1)² = 1.
        assert_eq!(mul(&p_minus_1, &p_minus_1), ONE);
        // Non-canonical y (p ≤ y < 2^255) reduces: p + 1 ≡ 1.
        assert_eq!(y_coordinate(&encode(&add_limbs(&P, &ONE), false)), ONE);
    }

    #[test]
    fn curve_points_agree_with_ed25519_dalek() {
        let mut keys: Vec<[u8; 32]> = (0..2000).map(sample).collect();
        for y in 0..64u64 {
            keys.push(encode(&small(y), false));
            keys.push(encode(&small(y), true));
        }
        // The 19 non-canonical encodings p ≤ y < 2^255, with either sign bit.
        for k in 0..19u64 {
            let y = add_limbs(&P, &small(k));
            keys.push(encode(&y, false));
            keys.push(encode(&y, true));
        }
        let mut points = 0;
        for key in &keys {
            let dalek = ed25519_dalek::VerifyingKey::from_bytes(key).is_ok();
            assert_eq!(is_curve_point(key), dalek, "{}", hex::encode(key));
            points += usize::from(dalek);
        }
        // About half of all y values are on the curve: both outcomes were exercised.
        assert!(points > 800 && points < keys.len() - 800, "{points}");
    }

    #[test]
    fn real_public_keys_are_points_of_large_order() {
        for i in 0..200 {
            let pair = Ed25519KeyPair::from_seed_unchecked(&sample(i)).unwrap();
            let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
            assert!(is_curve_point(&public));
            assert!(!is_small_order(&public));
        }
    }

    /// The canonical encodings of the 8 points of small order.
    fn torsion_points() -> Vec<[u8; 32]> {
        let minus_y8 = sub(&ZERO, &Y_ORDER_8);
        vec![
            encode(&ONE, false),
            encode(&sub(&ZERO, &ONE), false),
            encode(&ZERO, false),
            encode(&ZERO, true),
            encode(&Y_ORDER_8, false),
            encode(&Y_ORDER_8, true),
            encode(&minus_y8, false),
            encode(&minus_y8, true),
        ]
    }

    /// Every small-order key, however encoded, is caught; and each one really is dangerous:
    /// ring alone accepts a forged signature (S = 0, R a small-order point) under it.
    #[test]
    fn small_order_keys_are_caught_and_ring_alone_would_accept_forgeries() {
        let mut keys = torsion_points();
        // Non-canonical encodings of the same points: x = 0 with the sign bit set, y ≥ p.
        keys.push(encode(&ONE, true));
        keys.push(encode(&sub(&ZERO, &ONE), true));
        for k in [0, 1] {
            keys.push(encode(&add_limbs(&P, &small(k)), false));
            keys.push(encode(&add_limbs(&P, &small(k)), true));
        }
        for key in &keys {
            assert!(is_curve_point(key), "{}", hex::encode(key));
            assert!(is_small_order(key), "{}", hex::encode(key));
            let forged = (0..64u32).any(|m| {
                let message = m.to_be_bytes();
                torsion_points().iter().any(|r| {
                    let mut sig = [0u8; 64];
                    sig[..32].copy_from_slice(r);
                    UnparsedPublicKey::new(&ED25519, key)
                        .verify(&message, &sig)
                        .is_ok()
                })
            });
            assert!(forged, "no forgery found for {}", hex::encode(key));
        }
        // The identity key accepts the all-zero-S signature with R = identity for any message.
        let identity = encode(&ONE, false);
        let mut sig = [0u8; 64];
        sig[0] = 1;
        assert!(UnparsedPublicKey::new(&ED25519, &identity)
            .verify(b"anything at all", &sig)
            .is_ok());
    }
}
