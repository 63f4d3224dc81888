//! The relays over plain UDP sockets standing in for peers.

use std::time::Duration;

use tokio::net::UdpSocket;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// Two stand-in peers `a` and `b`, each behind its relay.
struct Pair {
    net: Network,
    a: UdpSocket,
    b: UdpSocket,
    relay_a: SocketAddr,
    relay_b: SocketAddr,
}

async fn pair(seed: u64) -> Pair {
    let mut net = Network::new(seed);
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_a = net.relay("a").await.unwrap();
    let relay_b = net.relay("b").await.unwrap();
    net.attach("a", a.local_addr().unwrap()).unwrap();
    net.attach("b", b.local_addr().unwrap()).unwrap();
    Pair {
        net,
        a,
        b,
        relay_a,
        relay_b,
    }
}

async fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(DEADLINE, s.recv_from(&mut buf))
        .await
        .expect("a datagram within the deadline")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

#[tokio::test]
async fn datagrams_and_replies_pass_through_the_relay_unchanged() {
    let p = pair(1).await;
    p.a.send_to(b"hello", p.relay_b).await.unwrap();
    let (got, back) = recv(&p.b).await;
    assert_eq!(got, b"hello");
    assert_ne!(
        back,
        p.a.local_addr().unwrap(),
        "b sees the relay's back socket"
    );
    p.b.send_to(b"hi", back).await.unwrap();
    let (got, from) = recv(&p.a).await;
    assert_eq!(got, b"hi");
    assert_eq!(from, p.relay_b, "the reply comes from where a sent to");
    // b dialling a goes through a's relay and a's own back socket for b.
    p.b.send_to(b"ping", p.relay_a).await.unwrap();
    let (got, _) = recv(&p.a).await;
    assert_eq!(got, b"ping");
}

#[tokio::test]
async fn a_cut_drops_both_ways_and_heal_restores_the_link() {
    let p = pair(2).await;
    let outsider = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    p.net.faults().cut("a", "b");
    for i in 0..20u8 {
        p.a.send_to(&[i], p.relay_b).await.unwrap();
        p.b.send_to(&[i], p.relay_a).await.unwrap();
    }
    // An outsider is never cut. Its datagram queues behind the others at each relay's front
    // socket, so once it arrives, the relay has dealt with everything sent before it.
    outsider.send_to(b"outside", p.relay_b).await.unwrap();
    outsider.send_to(b"outside", p.relay_a).await.unwrap();
    assert_eq!(recv(&p.b).await.0, b"outside");
    assert_eq!(recv(&p.a).await.0, b"outside");
    p.net.faults().heal();
    p.a.send_to(b"after", p.relay_b).await.unwrap();
    p.b.send_to(b"after", p.relay_a).await.unwrap();
    assert_eq!(recv(&p.b).await.0, b"after");
    assert_eq!(recv(&p.a).await.0, b"after");
}

#[tokio::test]
async fn isolate_and_split_cut_the_peers_they_name() {
    let mut p = pair(3).await;
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let _relay_c = p.net.relay("c").await.unwrap();
    p.net.attach("c", c.local_addr().unwrap()).unwrap();
    let faults = p.net.faults();
    faults.isolate("a");
    p.a.send_to(b"from a", p.relay_b).await.unwrap();
    c.send_to(b"from c", p.relay_b).await.unwrap();
    assert_eq!(recv(&p.b).await.0, b"from c");
    faults.heal();
    faults.split(&["a", "b"], &["c"]);
    c.send_to(b"from c", p.relay_b).await.unwrap();
    p.a.send_to(b"from a", p.relay_b).await.unwrap();
    assert_eq!(recv(&p.b).await.0, b"from a");
    assert_eq!(faults.cut_pairs().len(), 2);
}

#[tokio::test]
async fn every_datagram_is_duplicated_at_rate_one() {
    let p = pair(4).await;
    p.net.faults().set_all(LinkFaults {
        duplicate: 1.0,
        ..LinkFaults::default()
    });
    for i in 0..10u8 {
        p.a.send_to(&[i], p.relay_b).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(recv(&p.b).await.0[0]);
    }
    got.sort_unstable();
    let expected: Vec<u8> = (0..10u8).flat_map(|i| [i, i]).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn jitter_reorders_but_loses_nothing() {
    let p = pair(5).await;
    p.net.faults().set_all(LinkFaults {
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(40),
        ..LinkFaults::default()
    });
    let n = 200u16;
    for i in 0..n {
        p.a.send_to(&i.to_be_bytes(), p.relay_b).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..n {
        let (d, _) = recv(&p.b).await;
        got.push(u16::from_be_bytes([d[0], d[1]]));
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..n).collect::<Vec<_>>(),
        "each datagram exactly once"
    );
    assert_ne!(
        got, sorted,
        "200 datagrams with 40 ms of jitter kept their order"
    );
}

#[tokio::test]
async fn a_drop_rate_loses_some_and_a_link_of_its_own_loses_all() {
    let p = pair(6).await;
    let faults = p.net.faults();
    faults.set_all(LinkFaults {
        drop: 0.5,
        ..LinkFaults::default()
    });
    let n = 200u16;
    for i in 0..n {
        p.a.send_to(&i.to_be_bytes(), p.relay_b).await.unwrap();
    }
    // The outsider's marker queues behind a's datagrams at the relay's front socket.
    let outsider = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    outsider.send_to(b"end", p.relay_b).await.unwrap();
    let mut passed = 0;
    loop {
        let (d, _) = recv(&p.b).await;
        if d == b"end" {
            break;
        }
        passed += 1;
    }
    assert!(
        (40..160).contains(&passed),
        "{passed} of {n} passed at a drop rate of one half"
    );
    faults.set_link(
        "a",
        "b",
        LinkFaults {
            drop: 1.0,
            ..LinkFaults::default()
        },
    );
    faults.set_all(LinkFaults::default());
    p.a.send_to(b"lost", p.relay_b).await.unwrap();
    outsider.send_to(b"end", p.relay_b).await.unwrap();
    assert_eq!(recv(&p.b).await.0, b"end");
}
