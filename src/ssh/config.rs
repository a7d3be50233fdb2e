//! How our SSH connections are set up: the one host key type we install, the fastest cipher
//! here, keepalives, and windows and packets sized for a long fat link.

use std::borrow::Cow;
use std::time::Duration;

use russh::keys::{Algorithm, PrivateKey};
use russh::{Preferred, cipher, client, server};

/// How the session is set up: the one host key type we installed, the fastest cipher here, a
/// keepalive, and windows and packets sized for a long fat link.
pub(super) fn client_config() -> client::Config {
    client::Config {
        preferred: preferred(),
        window_size: WINDOW,
        // What the server may put in one packet to us: fewer, larger packets for pulls.
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: CHANNEL_BUFFER,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        ..client::Config::default()
    }
}

/// Only the key type we install, so the other side cannot offer another one; the fastest
/// cipher here first.
fn preferred() -> Preferred {
    Preferred {
        key: Cow::Borrowed(&[Algorithm::Ed25519]),
        cipher: Cow::Borrowed(preferred_ciphers()),
        ..Preferred::default()
    }
}

/// The holder's side of the local hop (see `held`), with `key` as its host key: the same
/// algorithms and packets, a window sized for a hop without delay. No delay after a refused
/// login: only this user can reach its socket. Runs come and go; the holder itself decides
/// when it ends.
pub(super) fn holder_config(key: PrivateKey) -> server::Config {
    server::Config {
        keys: vec![key],
        preferred: preferred(),
        window_size: LOCAL_WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: CHANNEL_BUFFER,
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        ..server::Config::default()
    }
}

/// How much the instance may send on a channel before we say we took it in (the SSH window of
/// the channels we open): a pull stalls a round trip each window, so it must cover the link's
/// bandwidth-delay product. 16 MiB covers 1 Gbit/s at 130 ms; OpenSSH's 2 MiB (and russh's)
/// caps a pull near 210 Mbit/s at 80 ms. It costs no memory by itself: russh gives the window
/// back as packets arrive, holds at most `CHANNEL_BUFFER` of them per channel, then stops
/// reading the connection until they are taken. (The other way, the instance's sshd sets the
/// window: OpenSSH's is 2 MiB, whatever the client.)
pub(super) const WINDOW: u32 = 16 * 1024 * 1024;
/// How much a run may send on a channel to the holder before the holder took it in: the
/// instance's sshd takes 2 MiB per channel at a time, and what a bigger window let through
/// would pile up in the run's memory (a big file's four parts at once: 64 MiB). The local hop
/// has no delay to cover.
const LOCAL_WINDOW: u32 = 2 * 1024 * 1024;
/// Packets held per channel before the connection is no longer read (russh's default): at
/// most `CHANNEL_BUFFER * MAX_PACKET` bytes, 6.4 MB, for the channel that carries rsync.
const CHANNEL_BUFFER: usize = 100;

/// What the connection reads from the network at most at a time.
pub(super) const READ_BUFFER: usize = 64 * 1024;
/// The largest packet we accept (russh warns above it; OpenSSH's own default is 32 KiB).
pub(super) const MAX_PACKET: u32 = 65535;

/// AES-GCM first where the CPU has AES instructions: there it costs both ends of a transfer
/// a fraction of ChaCha20-Poly1305 (russh's and OpenSSH's first choice, the fastest without
/// them), and the server has it by default too. The rest is russh's own order.
fn preferred_ciphers() -> &'static [cipher::Name] {
    const AES_FIRST: &[cipher::Name] = &[
        cipher::AES_256_GCM,
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_CTR,
        cipher::AES_192_CTR,
        cipher::AES_128_CTR,
    ];
    const CHACHA_FIRST: &[cipher::Name] = &[
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_GCM,
        cipher::AES_256_CTR,
        cipher::AES_192_CTR,
        cipher::AES_128_CTR,
    ];
    match aes_in_hardware() {
        true => AES_FIRST,
        false => CHACHA_FIRST,
    }
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_covers_a_fat_link_and_what_is_held_stays_small() {
        let config = client_config();
        // 1 Gbit/s for 100 ms, in bytes.
        let fat_link = 1_000_000_000 / 8 / 10;
        assert!(config.window_size >= fat_link, "{}", config.window_size);
        assert!(config.maximum_packet_size <= 65535, "russh refuses more");
        let held = config.channel_buffer_size * config.maximum_packet_size as usize;
        assert!(held <= 8 * 1024 * 1024, "{held} bytes held per channel");
    }
}
