//! Key generation and key-manager round trips, measured over real QUIC on 127.0.0.1.
//!
//! `cargo bench -p conclave-keymanager --bench register` (release profile). Prints figures;
//! asserts nothing about time, since this machine is shared and noisy.

use std::time::{Duration, Instant};

use conclave_keymanager::client::KeymanagerClient;
use conclave_keymanager::{Keymanager, KeymanagerOptions};
use conclave_shared::cert::Role;
use conclave_shared::config::EnrolmentMode;
use conclave_shared::identity::Identity;
use tokio_util::sync::CancellationToken;

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "{label:<36} n={:<4} mean {:>8.2} ms  p50 {:>8.2} ms  p99 {:>8.2} ms  min {:>8.2} ms  max {:>8.2} ms",
        v.len(),
        ms(mean),
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 99 / 100).min(v.len() - 1)]),
        ms(v[0]),
        ms(v[v.len() - 1]),
    );
}

fn main() {
    for (bits, n) in [(2048, 20), (3072, 6), (4096, 3)] {
        let times = (0..n)
            .map(|_| {
                let t = Instant::now();
                Identity::generate(bits).expect("keygen");
                t.elapsed()
            })
            .collect();
        summary(&format!("RSA-{bits} key generation"), times);
    }

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let km = Keymanager::open(&KeymanagerOptions {
            data_dir: dir.path().to_owned(),
            mode: EnrolmentMode::Open,
            root_public_key: dir.path().join("root.pub.pem"),
            key_bits: 2048,
        })
        .expect("open");
        let root = conclave_shared::identity::PublicKey::load_pem(&dir.path().join("root.pub.pem"))
            .expect("root");
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = ep.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let server = tokio::spawn(km.run(ep, stop.clone()));

        const N: usize = 100;
        let keys: Vec<Identity> = (0..N)
            .map(|_| Identity::generate(2048).expect("keygen"))
            .collect();
        let cep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let t = Instant::now();
        let client = KeymanagerClient::connect(&cep, addr, &root)
            .await
            .expect("connect");
        summary("connect (QUIC + TLS, root pinned)", vec![t.elapsed()]);

        let mut reg = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let t = Instant::now();
            client
                .register(k, &format!("m{i}"), Role::Member, None)
                .await
                .expect("register");
            reg.push(t.elapsed());
        }
        summary("register (challenge + register, fsync)", reg);

        let mut look = Vec::new();
        for i in 0..N {
            let t = Instant::now();
            client.lookup(&format!("m{i}")).await.expect("lookup");
            look.push(t.elapsed());
        }
        summary("lookup", look);
        stop.cancel();
        let _ = server.await;
    });
}
