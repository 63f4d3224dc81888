//! What a key rotation costs: drawing a key, wrapping it to every member and signing the
//! block (the leader's work), checking the block (every member), and unwrapping one's own
//! copy (every member). `cargo bench -p conclave-shared --bench key_rotation`.

use std::time::{Duration, Instant};

use conclave_shared::chain::{
    BlockBody, BlockHeader, BlockKind, ChainBuilder, KeyRotation, MemberRole, Rules, WrappedKey,
    FORMAT_VERSION,
};
use conclave_shared::envelope::{unwrap_key, wrap_key, GroupKey};
use conclave_shared::identity::Identity;

const ROUNDS: u32 = 20;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let root = Identity::generate(2048).expect("root");
    for n in [3usize, 10] {
        let ids: Vec<Identity> = (0..n)
            .map(|_| Identity::generate(2048).expect("key"))
            .collect();
        let mut b = ChainBuilder::new(
            &root,
            &ids[0],
            [7; 16],
            Rules {
                max_record_bytes: 1024,
                share_history: false,
                max_voters: 15,
            },
        )
        .expect("builder");
        for (i, id) in ids.iter().enumerate() {
            b.admit(id, &format!("m{i}"), MemberRole::Voter, "127.0.0.1:1")
                .expect("admit");
        }
        b.rotate_key().expect("rotate");
        let members: Vec<_> = b
            .state()
            .admitted()
            .map(|(name, m)| (name.to_owned(), m.node_id, m.cert.public_key().clone()))
            .collect();

        let mut leader = Duration::ZERO;
        let mut check = Duration::ZERO;
        let mut unwrap = Duration::ZERO;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let key = GroupKey::generate();
            let wrapped: Vec<WrappedKey> = members
                .iter()
                .map(|(name, node_id, pk)| WrappedKey {
                    name: name.clone(),
                    node_id: *node_id,
                    wrapped: wrap_key(pk, &key).expect("wrap"),
                })
                .collect();
            let mut body = BlockBody::KeyRotation(KeyRotation {
                epoch: b.state().epoch() + 1,
                wrapped,
                history: Vec::new(),
                leader_sig: Vec::new(),
            });
            let (time_ms, term, leader_id) = (1, 1, ids[0].fingerprint().node_id());
            conclave_shared::chain::sign_as_leader(&ids[0], &[7; 16], &mut body, time_ms, term)
                .expect("sign");
            leader += t.elapsed();

            let header = BlockHeader {
                version: FORMAT_VERSION,
                height: b.state().height() + 1,
                prev_hash: b.head().hash,
                term,
                leader: leader_id,
                time_ms,
                kind: BlockKind::KeyRotation,
            };
            let mut state = b.state().clone();
            let t = Instant::now();
            state.apply(&header, &body).expect("a valid rotation");
            check += t.elapsed();

            let BlockBody::KeyRotation(k) = &body else {
                unreachable!()
            };
            let t = Instant::now();
            unwrap_key(&ids[1], &k.wrapped[1].wrapped).expect("unwrap");
            unwrap += t.elapsed();
        }
        println!(
            "key rotation, {n} members: leader (draw, wrap to {n}, sign) {:.2} ms; every member checks the block {:.2} ms and unwraps its copy {:.2} ms (mean of {ROUNDS})",
            ms(leader / ROUNDS),
            ms(check / ROUNDS),
            ms(unwrap / ROUNDS)
        );
    }
}
