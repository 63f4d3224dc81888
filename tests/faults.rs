//! Named fault scenarios over real `conclave` processes, each peer behind a relay of the
//! chaos crate's fault layer (`conclave_chaos::net`). Every assertion is an outcome reached
//! within a deadline, or a negative one anchored on the other side's progress ("while the
//! majority committed three records, the minority committed nothing"), never a timing.

use std::time::Duration;

use conclave_chaos::checker::{author_order, chains_verify, check_all, common_prefix};
use conclave_chaos::group::{Group, GroupOptions};
use conclave_chaos::history::History;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
const PEERS: usize = 5;

async fn group(seed: u64) -> (tempfile::TempDir, Group) {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = Group::start(
        GroupOptions {
            bin: env!("CARGO_BIN_EXE_conclave").into(),
            dir: dir.path().to_owned(),
            seed,
            config: None,
        },
        PEERS,
    )
    .await
    .expect("a group of five");
    (dir, g)
}

fn leader(g: &Group) -> (String, u64) {
    g.leader().expect("a leader once everyone joined")
}

/// Waits until `old` names a leader other than itself, of `new_term` or later (`new`
/// leads that term).
async fn follows_another(g: &Group, old: &str, new: &str, new_term: u64) {
    let seen = g
        .wait_event(
            old,
            0,
            "leader",
            |v| v["name"] != old && v["term"].as_u64().is_some_and(|t| t >= new_term),
            DEADLINE,
        )
        .await
        .unwrap_or_else(|e| panic!("{old} never followed {new} (term {new_term}): {e}"));
    assert_ne!(seen["name"], old);
}

/// Waits until each of `peers` names a leader other than `not` at a term above `above`;
/// returns the leader with the highest term named.
async fn new_leader(g: &Group, peers: &[String], not: &str, above: u64) -> (String, u64) {
    let mut best = (String::new(), 0);
    for p in peers {
        let v = g
            .wait_event(
                p,
                0,
                "leader",
                |v| v["name"] != not && v["term"].as_u64().is_some_and(|t| t > above),
                DEADLINE,
            )
            .await
            .unwrap_or_else(|e| panic!("{p} never saw a leader other than {not}: {e}"));
        let term = v["term"].as_u64().unwrap_or(0);
        if term > best.1 {
            best = (v["name"].as_str().unwrap_or_default().to_owned(), term);
        }
    }
    best
}

/// Appends `text` on `peer` and waits for its `committed` event.
async fn commit(g: &Group, peer: &str, text: &str) -> Value {
    let mark = g.peer(peer).unwrap().events.len();
    g.send_line(peer, text).unwrap();
    g.wait_event(peer, mark, "committed", |_| true, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{text:?} on {peer} never committed: {e}"))
}

fn others(g: &Group, but: &[&str]) -> Vec<String> {
    g.names()
        .into_iter()
        .filter(|n| !but.contains(&n.as_str()))
        .collect()
}

/// Stops every peer and checks their stored chains: one sequence, each author's records in
/// order and once, every chain verifying under the root key.
async fn stop_and_check_chains(g: &mut Group) {
    let unclean = g.stop_all().await;
    assert!(unclean.is_empty(), "did not stop cleanly: {unclean:?}");
    let root = g.root().unwrap();
    let chains = g.chains().unwrap();
    let mut found = common_prefix::check(&chains);
    found.extend(author_order::check(&chains));
    found.extend(chains_verify::check(&root, &chains));
    assert!(found.is_empty(), "{found:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_partition_cannot_commit_and_a_majority_can() {
    let (_dir, mut g) = group(11).await;
    let (old, term) = leader(&g);
    let rest = others(&g, &[&old]);
    let minority = vec![old.clone(), rest[0].clone()];
    let majority = rest[1..].to_vec();
    g.faults().split(&minority, &majority);

    let marks: Vec<usize> = minority
        .iter()
        .map(|p| g.peer(p).unwrap().events.len())
        .collect();
    for p in &minority {
        g.send_line(p, &format!("from {p} in the minority"))
            .unwrap();
    }
    let (new, _) = new_leader(&g, &majority, &old, term).await;
    assert!(majority.contains(&new), "{new} leads the majority side");
    for i in 0..3 {
        commit(&g, &majority[i % majority.len()], &format!("majority {i}")).await;
    }
    // The majority committed three records after the minority's lines were handed over:
    // none of the minority's is committed, nor applied anywhere.
    for (p, mark) in minority.iter().zip(&marks) {
        let since = g.peer(p).unwrap().events.since(*mark);
        assert!(
            !since.iter().any(|v| v["event"] == "committed"),
            "{p} committed in a minority: {since:#?}"
        );
    }
    for p in g.names() {
        let minority_record = g.peer(&p).unwrap().events.last("record", |v| {
            v["text"]
                .as_str()
                .is_some_and(|t| t.contains("in the minority"))
        });
        assert!(minority_record.is_none(), "{p} applied {minority_record:?}");
    }

    g.faults().heal();
    for (p, mark) in minority.iter().zip(&marks) {
        g.wait_event(p, *mark, "committed", |_| true, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{p}'s line never committed after the heal: {e}"));
    }
    stop_and_check_chains(&mut g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_steps_down_and_the_rest_elect_another() {
    let (_dir, g) = group(12).await;
    let (old, term) = leader(&g);
    let rest = others(&g, &[&old]);
    g.faults().isolate(&old);
    let (new, new_term) = new_leader(&g, &rest, &old, term).await;
    commit(&g, &rest[0], "while the old leader is cut off").await;
    // Still cut off, the old leader stops calling itself leader (it has heard from no
    // majority for longer than the others took to elect another).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mark = g.peer(&old).unwrap().events.len();
        g.send_line(&old, "/status").unwrap();
        let info = g
            .wait_event(&old, mark, "info", |v| v["command"] == "status", DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{old} did not answer /status: {e}"));
        let lines: Vec<String> = info["lines"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let leader_line = lines.iter().find(|l| l.starts_with("leader")).cloned();
        if leader_line.as_deref() != Some(format!("leader {old}").as_str()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{old}, cut off, still says it leads: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    g.faults().heal();
    // The old leader hears of the higher term and follows: it names another leader.
    follows_another(&g, &old, &new, new_term).await;
    // And, as a follower, it appends through the new leader.
    commit(&g, &old, "the old leader, now a follower").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_late_records_never_enter_the_chain() {
    let (dir, mut g) = group(13).await;
    let (old, term) = leader(&g);
    let rest = others(&g, &[&old]);
    for n in g.names() {
        g.start_writer(&n, Duration::from_millis(5)).unwrap();
    }
    let acked = |g: &Group, name: &str| {
        g.peer(name)
            .unwrap()
            .events
            .since(0)
            .iter()
            .filter(|v| v["event"] == "committed")
            .count()
    };
    // Wait for the old leader's writer to get going, then cut the leader off while it writes.
    let mark = g.peer(&old).unwrap().events.len();
    for _ in 0..3 {
        g.wait_event(&old, mark, "committed", |_| true, DEADLINE)
            .await
            .unwrap();
    }
    g.faults().isolate(&old);
    let cut_at = acked(&g, &old);
    let (new, _) = new_leader(&g, &rest, &old, term).await;
    // The rest keep committing under the new leader while the deposed one holds lines.
    let mark = g.peer(&new).unwrap().events.len();
    for _ in 0..5 {
        g.wait_event(&new, mark, "committed", |_| true, DEADLINE)
            .await
            .unwrap();
    }
    assert!(
        acked(&g, &old) <= cut_at + 1,
        "{old} kept committing while cut off from everyone"
    );
    g.faults().heal();
    // After the heal the deposed leader's writer commits again (through the new leader).
    let mark = g.peer(&old).unwrap().events.len();
    g.wait_event(&old, mark, "committed", |_| true, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{old} never committed after the heal: {e}"));
    g.quiesce_writers();
    let writers = g.finish_writers().await;
    assert!(writers.iter().all(|w| w.error.is_none()), "{writers:#?}");
    let unclean = g.stop_all().await;
    assert!(unclean.is_empty(), "did not stop cleanly: {unclean:?}");
    let root = g.root().unwrap();
    let chains = g.chains().unwrap();
    let history = History::load_dir(&dir.path().join("history")).unwrap();
    let report = check_all(&history, &chains, &root);
    assert!(report.passed(), "{report}");
    assert_eq!(
        (report.counts.lost, report.counts.duplicated),
        (0, 0),
        "{report}"
    );
    assert!(report.counts.acknowledged > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_sends_a_newcomer_to_the_new_leader_after_a_partition_heals() {
    let (_dir, mut g) = group(14).await;
    let (old, term) = leader(&g);
    let rest = others(&g, &[&old]);
    g.faults().isolate(&old);
    new_leader(&g, &rest, &old, term).await;
    g.faults().heal();
    g.wait_event(
        &old,
        0,
        "leader",
        |v| v["name"] != old.as_str() && v["term"].as_u64().is_some_and(|t| t > term),
        DEADLINE,
    )
    .await
    .unwrap();
    // The proxy heard the old leader's claims all along; a newcomer must still be sent to
    // whoever leads now.
    g.add_peer("p6").await.unwrap();
    let joined = g
        .wait_event("p6", 0, "joined", |_| true, DEADLINE)
        .await
        .unwrap();
    let (now, _) = leader(&g);
    assert_ne!(
        joined["leader"],
        old.as_str(),
        "sent to the deposed leader: {joined}"
    );
    assert_eq!(joined["leader"], now.as_str(), "{joined}");
    commit(&g, "p6", "the newcomer writes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_paused_past_the_election_timeout_rejoins_as_follower() {
    let (_dir, mut g) = group(15).await;
    let (old, term) = leader(&g);
    let rest = others(&g, &[&old]);
    g.pause(&old).unwrap();
    // The others notice the silence and elect someone else: the pause outlasted the
    // election timeout, whatever the clock says.
    let (new, new_term) = new_leader(&g, &rest, &old, term).await;
    commit(&g, &rest[0], "while the leader is stopped").await;
    g.resume(&old).unwrap();
    follows_another(&g, &old, &new, new_term).await;
    commit(&g, &old, "back from the pause").await;
    stop_and_check_chains(&mut g).await;
}
