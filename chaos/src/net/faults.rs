//! The fault table every relay consults: which peer an address belongs to, which links are
//! cut, and how each link drops, delays and duplicates datagrams.
//!
//! Links are directed, `from -> to`, between peers named as the group names them. Anything
//! that is not a registered peer (the proxy, the key manager, `conclave status`, a newcomer
//! not yet registered) is [`Node::Outside`]: its datagrams always pass untouched, so a cut
//! peer can still reach the proxy, as a peer cut off by a broken switch port would not, but
//! as one behind a partition between sites would. Tests that want the proxy cut too can
//! register it as a peer.
//!
//! A datagram's fate is drawn from the caller's random generator ([`FaultTable::fate`]), so a
//! relay seeded once draws the same fates for the same sequence of datagrams.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;

/// One end of a link: a registered peer, or anything else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Peer(String),
    Outside(SocketAddr),
}

impl Node {
    pub fn peer(&self) -> Option<&str> {
        match self {
            Node::Peer(n) => Some(n),
            Node::Outside(_) => None,
        }
    }
}

/// How one direction of a link mistreats datagrams. The default passes everything at once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFaults {
    /// The chance, 0 to 1, that a datagram is dropped.
    pub drop: f64,
    /// The chance, 0 to 1, that a datagram is delivered twice.
    pub duplicate: f64,
    /// Every datagram waits this long.
    pub delay: Duration,
    /// And a further uniform 0..jitter, drawn per copy: datagrams overtake one another.
    pub jitter: Duration,
}

impl LinkFaults {
    pub fn is_clean(&self) -> bool {
        *self == LinkFaults::default()
    }
}

/// What becomes of one datagram: no copy (dropped), one, or two, each after its delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fate {
    pub copies: Vec<Duration>,
}

impl Fate {
    pub fn dropped(&self) -> bool {
        self.copies.is_empty()
    }
}

/// The state behind a [`crate::net::Faults`] handle.
#[derive(Debug, Clone, Default)]
pub struct FaultTable {
    /// Each peer's own sending address (its `--listen` socket), by which its datagrams are
    /// recognised at the relays.
    sources: HashMap<SocketAddr, String>,
    /// Directed links that pass nothing.
    blocked: BTreeSet<(String, String)>,
    /// Faults of every peer-to-peer link that has none of its own.
    all: LinkFaults,
    /// Faults of single directed links.
    links: BTreeMap<(String, String), LinkFaults>,
}

impl FaultTable {
    /// Datagrams from `addr` are `name`'s from now on.
    pub fn register(&mut self, name: &str, addr: SocketAddr) {
        self.sources.retain(|_, n| n != name);
        self.sources.insert(addr, name.to_owned());
    }

    pub fn node_of(&self, addr: SocketAddr) -> Node {
        match self.sources.get(&addr) {
            Some(name) => Node::Peer(name.clone()),
            None => Node::Outside(addr),
        }
    }

    /// Every registered peer, by name.
    pub fn peers(&self) -> BTreeSet<String> {
        self.sources.values().cloned().collect()
    }

    /// Cuts `a` and `b` off from each other, both ways.
    pub fn cut(&mut self, a: &str, b: &str) {
        if a != b {
            self.blocked.insert((a.to_owned(), b.to_owned()));
            self.blocked.insert((b.to_owned(), a.to_owned()));
        }
    }

    /// Cuts `name` off from every other registered peer.
    pub fn isolate(&mut self, name: &str) {
        for other in self.peers() {
            self.cut(name, &other);
        }
    }

    /// Cuts every peer of `one` off from every peer of `other`.
    pub fn split<S: AsRef<str>>(&mut self, one: &[S], other: &[S]) {
        for a in one {
            for b in other {
                self.cut(a.as_ref(), b.as_ref());
            }
        }
    }

    /// Ends every cut; drops, delays and duplicates stay.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Ends every cut and every fault: the network is clean again.
    pub fn clear(&mut self) {
        self.blocked.clear();
        self.links.clear();
        self.all = LinkFaults::default();
    }

    /// Faults for every peer-to-peer link without faults of its own.
    pub fn set_all(&mut self, faults: LinkFaults) {
        self.all = faults;
    }

    /// Faults for the directed link `from -> to` alone.
    pub fn set_link(&mut self, from: &str, to: &str, faults: LinkFaults) {
        self.links.insert((from.to_owned(), to.to_owned()), faults);
    }

    pub fn is_blocked(&self, from: &str, to: &str) -> bool {
        self.blocked.contains(&(from.to_owned(), to.to_owned()))
    }

    /// The pairs cut off from each other now, each once (`a < b`).
    pub fn cut_pairs(&self) -> Vec<(String, String)> {
        self.blocked
            .iter()
            .filter(|(a, b)| a < b)
            .cloned()
            .collect()
    }

    fn link(&self, from: &str, to: &str) -> LinkFaults {
        self.links
            .get(&(from.to_owned(), to.to_owned()))
            .copied()
            .unwrap_or(self.all)
    }

    /// What becomes of a datagram from `from` to `to`, drawn from `rng`.
    pub fn fate(&self, from: &Node, to: &Node, rng: &mut impl Rng) -> Fate {
        let (Some(f), Some(t)) = (from.peer(), to.peer()) else {
            return Fate {
                copies: vec![Duration::ZERO],
            };
        };
        if self.is_blocked(f, t) {
            return Fate { copies: Vec::new() };
        }
        let link = self.link(f, t);
        if link.is_clean() {
            return Fate {
                copies: vec![Duration::ZERO],
            };
        }
        if link.drop > 0.0 && rng.gen_bool(link.drop.clamp(0.0, 1.0)) {
            return Fate { copies: Vec::new() };
        }
        let n = if link.duplicate > 0.0 && rng.gen_bool(link.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        let copies = (0..n)
            .map(|_| {
                let jitter = if link.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    link.jitter.mul_f64(rng.gen::<f64>())
                };
                link.delay + jitter
            })
            .collect();
        Fate { copies }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn table() -> FaultTable {
        let mut t = FaultTable::default();
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            t.register(n, SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)));
        }
        t
    }

    fn peer(n: &str) -> Node {
        Node::Peer(n.into())
    }

    #[test]
    fn sources_are_recognised_by_address_and_a_new_address_replaces_the_old() {
        let mut t = table();
        let a = SocketAddr::from(([127, 0, 0, 1], 1000));
        assert_eq!(t.node_of(a), peer("a"));
        t.register("a", SocketAddr::from(([127, 0, 0, 1], 2000)));
        assert_eq!(t.node_of(a), Node::Outside(a));
        assert_eq!(t.peers().len(), 4);
    }

    #[test]
    fn isolate_split_and_heal_cut_exactly_the_links_they_name() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut t = table();
        t.isolate("a");
        for other in ["b", "c", "d"] {
            assert!(t.fate(&peer("a"), &peer(other), &mut rng).dropped());
            assert!(t.fate(&peer(other), &peer("a"), &mut rng).dropped());
        }
        assert!(!t.fate(&peer("b"), &peer("c"), &mut rng).dropped());
        let outside = Node::Outside(SocketAddr::from(([127, 0, 0, 1], 9)));
        assert!(!t.fate(&peer("a"), &outside, &mut rng).dropped());
        t.heal();
        t.split(&["a", "b"], &["c", "d"]);
        assert_eq!(t.cut_pairs().len(), 4);
        assert!(t.fate(&peer("b"), &peer("c"), &mut rng).dropped());
        assert!(!t.fate(&peer("a"), &peer("b"), &mut rng).dropped());
        assert!(!t.fate(&peer("c"), &peer("d"), &mut rng).dropped());
        t.heal();
        assert!(t.cut_pairs().is_empty());
    }

    #[test]
    fn drop_and_duplicate_rates_show_in_the_fates_and_replay_from_the_seed() {
        let mut t = table();
        t.set_all(LinkFaults {
            drop: 0.3,
            duplicate: 0.2,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(10),
        });
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..2000)
                .map(|_| t.fate(&peer("a"), &peer("b"), &mut rng))
                .collect::<Vec<_>>()
        };
        let fates = draw(7);
        assert_eq!(fates, draw(7));
        assert_ne!(fates, draw(8));
        let dropped = fates.iter().filter(|f| f.dropped()).count();
        let doubled = fates.iter().filter(|f| f.copies.len() == 2).count();
        assert!((450..750).contains(&dropped), "{dropped} of 2000 dropped");
        assert!((200..400).contains(&doubled), "{doubled} of 2000 doubled");
        for d in fates.iter().flat_map(|f| &f.copies) {
            assert!(*d >= Duration::from_millis(5) && *d <= Duration::from_millis(15));
        }
    }

    #[test]
    fn a_link_of_its_own_overrides_the_default_and_clear_resets_everything() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut t = table();
        t.set_all(LinkFaults {
            drop: 1.0,
            ..LinkFaults::default()
        });
        t.set_link("a", "b", LinkFaults::default());
        assert!(!t.fate(&peer("a"), &peer("b"), &mut rng).dropped());
        assert!(t.fate(&peer("b"), &peer("a"), &mut rng).dropped());
        t.cut("c", "d");
        t.clear();
        assert!(!t.fate(&peer("b"), &peer("a"), &mut rng).dropped());
        assert!(!t.fate(&peer("c"), &peer("d"), &mut rng).dropped());
    }
}
