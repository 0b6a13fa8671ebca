//! The MESSAGE boxes of a session, sealed with the session key's XSalsa20 subkey for each
//! direction derived once rather than at every box.
//!
//! A box is XSalsa20-Poly1305 under a 24-octet nonce: HSalsa20 derives a subkey from the box
//! key and the nonce's first 16 octets, and Salsa20 under that subkey and the last 8 octets
//! makes the keystream. A MESSAGE nonce's first 16 octets are fixed for each direction
//! (RFC 26: `"CurveZMQMESSAGEC"` from the client, `"CurveZMQMESSAGES"` from the server) and
//! only its last 8, the short nonce, change; so the subkey of each direction is the same for
//! every MESSAGE, and is derived once, with the crate's own HSalsa20. Each box is then
//! `crypto_secretbox`'s own construction over Salsa20 under that subkey ([`Derived`], whose key
//! derivation is the identity): the same bytes as [`crypto_box::SalsaBox`] makes, a Salsa20
//! block cheaper.

use crypto_box::aead::generic_array::GenericArray;
use crypto_box::aead::KeyInit;
use crypto_secretbox::{Kdf, Key, SecretBox};
use salsa20::cipher::consts::{U10, U16, U32, U8};
use salsa20::cipher::inout::InOutBuf;
use salsa20::cipher::{Iv, IvSizeUser, KeyIvInit, KeySizeUser, StreamCipher, StreamCipherError};
use salsa20::Salsa20;

/// Salsa20 under an XSalsa20 subkey already derived: as a [`Kdf`] it passes its key through.
pub(crate) struct Derived(Salsa20);

impl KeySizeUser for Derived {
    type KeySize = U32;
}

impl IvSizeUser for Derived {
    type IvSize = U8;
}

impl KeyIvInit for Derived {
    fn new(key: &salsa20::Key, iv: &Iv<Self>) -> Self {
        Self(Salsa20::new(key, iv))
    }
}

impl StreamCipher for Derived {
    fn try_apply_keystream_inout(
        &mut self,
        buf: InOutBuf<'_, '_, u8>,
    ) -> Result<(), StreamCipherError> {
        self.0.try_apply_keystream_inout(buf)
    }
}

impl Kdf for Derived {
    /// The key is the subkey already: nothing to derive.
    fn kdf(key: &Key, _prefix: &GenericArray<u8, U16>) -> Key {
        *key
    }
}

/// The box of one direction of a session: [`SecretBox`] over [`Derived`] under the subkey for
/// `prefix`. Its nonce's first 16 octets are not read.
pub(crate) type DirectionBox = SecretBox<Derived>;

/// The key of every box between the holder of `secret` and the holder of `public`: X25519,
/// then HSalsa20 with a zero nonce, as `crypto_box` does (`crypto_box_beforenm`). A
/// [`crypto_secretbox::XSalsa20Poly1305`] under it is the [`crypto_box::SalsaBox`] of the two
/// keys.
pub(crate) fn box_key(
    public: &crypto_box::PublicKey,
    secret: &crypto_box::SecretKey,
) -> zeroize::Zeroizing<Key> {
    let point = curve25519_dalek::montgomery::MontgomeryPoint(*public.as_bytes());
    let shared = zeroize::Zeroizing::new((point * secret.to_scalar()).to_bytes());
    zeroize::Zeroizing::new(salsa20::hsalsa::<U10>(
        GenericArray::from_slice(&*shared),
        &GenericArray::default(),
    ))
}

/// The box for MESSAGE nonces beginning with `prefix` under `box_key`: HSalsa20 with `prefix`
/// makes the subkey once.
pub(crate) fn direction_box(box_key: &Key, prefix: &[u8; 16]) -> DirectionBox {
    let subkey = zeroize::Zeroizing::new(salsa20::hsalsa::<U10>(
        box_key,
        GenericArray::from_slice(prefix),
    ));
    DirectionBox::new(&subkey)
}

#[cfg(test)]
mod tests {
    use crypto_box::aead::{AeadInPlace, OsRng};
    use crypto_box::{SalsaBox, SecretKey};

    use super::*;

    #[test]
    fn a_direction_box_seals_and_opens_as_the_salsa_box_does() {
        for round in 0..50u64 {
            let (ours, theirs) = (
                SecretKey::generate(&mut OsRng),
                SecretKey::generate(&mut OsRng),
            );
            let reference = SalsaBox::new(&theirs.public_key(), &ours);
            let prefix = if round % 2 == 0 {
                b"CurveZMQMESSAGEC"
            } else {
                b"CurveZMQMESSAGES"
            };
            let key = box_key(&theirs.public_key(), &ours);
            let fast = direction_box(&key, prefix);
            // The peer's box for the same direction, from its own keys.
            let peer = direction_box(&box_key(&ours.public_key(), &theirs), prefix);
            // Under the box key alone, XSalsa20-Poly1305 is the SalsaBox.
            let whole = crypto_secretbox::XSalsa20Poly1305::new(&key);
            let mut nonce = [0u8; 24];
            nonce[..16].copy_from_slice(prefix);
            nonce[16..].copy_from_slice(&(round * 977 + 1).to_be_bytes());
            let nonce = GenericArray::from_slice(&nonce);
            let plain: Vec<u8> = (0..(round as usize * 37) % 300).map(|i| i as u8).collect();

            let mut expected = plain.clone();
            let expected_tag = reference
                .encrypt_in_place_detached(nonce, b"", &mut expected)
                .unwrap();
            let mut sealed = plain.clone();
            let tag = fast
                .encrypt_in_place_detached(nonce, b"", &mut sealed)
                .unwrap();
            assert_eq!((tag, &sealed), (expected_tag, &expected), "round {round}");
            let mut again = plain.clone();
            let whole_tag = whole
                .encrypt_in_place_detached(nonce, b"", &mut again)
                .unwrap();
            assert_eq!(
                (whole_tag, &again),
                (expected_tag, &expected),
                "round {round}"
            );

            peer.decrypt_in_place_detached(nonce, b"", &mut sealed, &tag)
                .expect("the peer opens it");
            assert_eq!(sealed, plain);
            let mut altered = expected.clone();
            if let Some(first) = altered.first_mut() {
                *first ^= 1;
                assert!(peer
                    .decrypt_in_place_detached(nonce, b"", &mut altered, &tag)
                    .is_err());
            }
        }
    }
}
