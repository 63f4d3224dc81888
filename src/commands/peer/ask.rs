//! The questions a person answers on a terminal before joining: name, address, port. Each
//! has a default in brackets (Enter takes it); a bad answer is explained and asked again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Where answers come from: the line editor on a terminal, a script in tests.
pub trait Prompter {
    /// One answer, or `None` when the person gave up (Ctrl-C, Ctrl-D).
    fn read(&mut self, prompt: &str) -> Option<String>;
    /// A line of explanation.
    fn say(&mut self, line: &str);
}

/// What the person chose.
#[derive(Debug, PartialEq, Eq)]
pub struct Answers {
    pub name: String,
    /// `None` when the caller already knew the address (`--listen`).
    pub listen: Option<SocketAddr>,
}

/// Asks for the name and, when `listen` is not known yet, the address and port.
/// `None` means the person gave up.
pub fn ask(
    p: &mut dyn Prompter,
    default_name: Option<&str>,
    listen_known: bool,
    default_listen: SocketAddr,
    proxy: SocketAddr,
) -> Option<Answers> {
    p.say(&format!(
        "Joining the group whose proxy is {proxy}. Press Enter to take the [default]."
    ));
    let name = ask_until(p, &bracket("user name", default_name), |a| {
        parse_name(a, default_name)
    })?;
    if listen_known {
        return Some(Answers { name, listen: None });
    }
    let auto = auto_address(proxy, default_listen.ip());
    let ip = ask_until(
        p,
        &format!("address to listen on (auto = {auto}, the one that reaches the proxy) [auto]: "),
        |a| parse_address(a, auto),
    )?;
    let port_default = default_listen.port().to_string();
    let port = ask_until(
        p,
        &bracket("port (0 = any free port)", Some(&port_default)),
        |a| parse_port(a, ip, default_listen.port()),
    )?;
    Some(Answers {
        name,
        listen: Some(SocketAddr::new(ip, port)),
    })
}

fn bracket(question: &str, default: Option<&str>) -> String {
    match default {
        Some(d) => format!("{question} [{d}]: "),
        None => format!("{question}: "),
    }
}

fn ask_until<T>(
    p: &mut dyn Prompter,
    prompt: &str,
    mut parse: impl FnMut(&str) -> Result<T, String>,
) -> Option<T> {
    loop {
        let answer = p.read(prompt)?;
        match parse(answer.trim()) {
            Ok(v) => return Some(v),
            Err(why) => p.say(&why),
        }
    }
}

/// The login name, if it is also a valid member name.
pub fn default_name() -> Option<String> {
    let user = std::env::var("USER").ok()?;
    conclave_shared::cert::validate_name(&user).ok()?;
    Some(user)
}

fn parse_name(answer: &str, default: Option<&str>) -> Result<String, String> {
    let name = match (answer, default) {
        ("", Some(d)) => d,
        ("", None) => return Err("a name is needed: the others see it beside your records".into()),
        (a, _) => a,
    };
    conclave_shared::cert::validate_name(name).map_err(|e| format!("{e}; try another"))?;
    Ok(name.to_owned())
}

fn parse_address(answer: &str, auto: IpAddr) -> Result<IpAddr, String> {
    let ip = if answer.is_empty() || answer.eq_ignore_ascii_case("auto") {
        auto
    } else {
        answer.parse::<IpAddr>().map_err(|_| {
            format!("{answer:?} is not an IP address; type one such as 127.0.0.1 or 192.168.1.20, or auto")
        })?
    };
    UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| {
        format!("cannot listen on {ip} ({e}); type an address of this machine, or auto")
    })?;
    Ok(ip)
}

fn parse_port(answer: &str, ip: IpAddr, default: u16) -> Result<u16, String> {
    let port = if answer.is_empty() {
        default
    } else {
        answer
            .parse::<u16>()
            .map_err(|_| format!("{answer:?} is not a port; type a number from 0 to 65535"))?
    };
    if port != 0 {
        UdpSocket::bind(SocketAddr::new(ip, port)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("port {port} is in use on {ip}; choose another, or 0 for any free port")
            } else {
                format!("cannot listen on {ip}:{port} ({e}); choose another port, or 0")
            }
        })?;
    }
    Ok(port)
}

/// The local address the system would use to reach the proxy: on a machine whose name
/// resolves only to 127.0.0.1 this still finds the interface the group can reach. No packet
/// is sent (connecting a UDP socket only picks a route).
fn auto_address(proxy: SocketAddr, fallback: IpAddr) -> IpAddr {
    let any = match proxy {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    UdpSocket::bind(SocketAddr::new(any, 0))
        .and_then(|s| {
            s.connect(proxy)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a list; records what was asked and said.
    struct Script {
        answers: Vec<&'static str>,
        transcript: Vec<String>,
    }

    impl Prompter for Script {
        fn read(&mut self, prompt: &str) -> Option<String> {
            self.transcript.push(format!("? {prompt}"));
            if self.answers.is_empty() {
                None
            } else {
                Some(self.answers.remove(0).to_owned())
            }
        }
        fn say(&mut self, line: &str) {
            self.transcript.push(format!("! {line}"));
        }
    }

    fn run(answers: Vec<&'static str>, listen_known: bool) -> (Option<Answers>, Vec<String>) {
        let mut s = Script {
            answers,
            transcript: Vec::new(),
        };
        let proxy: SocketAddr = "127.0.0.1:7401".parse().unwrap();
        let got = ask(
            &mut s,
            Some("alice"),
            listen_known,
            "127.0.0.1:0".parse().unwrap(),
            proxy,
        );
        (got, s.transcript)
    }

    #[test]
    fn enter_takes_every_default() {
        let (got, transcript) = run(vec!["", "", ""], false);
        assert_eq!(
            got,
            Some(Answers {
                name: "alice".into(),
                listen: Some("127.0.0.1:0".parse().unwrap()),
            })
        );
        assert!(transcript.iter().any(|l| l == "? user name [alice]: "));
        assert!(transcript.iter().any(|l| l.contains("[auto]")));
        assert!(transcript
            .iter()
            .any(|l| l.ends_with("port (0 = any free port) [0]: ")));
    }

    #[test]
    fn bad_answers_are_explained_and_asked_again() {
        let busy = UdpSocket::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port().to_string();
        let busy_port: &'static str = Box::leak(busy_port.into_boxed_str());
        let (got, transcript) = run(
            vec![
                "not a/name",
                "bob", // name
                "localhost-ish",
                "192.0.2.77",
                "127.0.0.1", // address
                "99999",
                busy_port,
                "0", // port
            ],
            false,
        );
        assert_eq!(
            got,
            Some(Answers {
                name: "bob".into(),
                listen: Some("127.0.0.1:0".parse().unwrap()),
            })
        );
        let said: Vec<&String> = transcript.iter().filter(|l| l.starts_with("! ")).collect();
        // The greeting, then one explanation per bad answer.
        assert_eq!(said.len(), 6, "{transcript:#?}");
        assert!(said[2].contains("not an IP address"), "{said:?}");
        assert!(said[3].contains("cannot listen on 192.0.2.77"), "{said:?}");
        assert!(said[4].contains("not a port"), "{said:?}");
        assert!(said[5].contains("is in use"), "{said:?}");
        // Each question is asked again after a bad answer.
        let asked_name = transcript
            .iter()
            .filter(|l| l.contains("user name"))
            .count();
        assert_eq!(asked_name, 2);
    }

    #[test]
    fn a_known_listen_address_asks_only_the_name() {
        let (got, transcript) = run(vec!["carol"], true);
        assert_eq!(
            got,
            Some(Answers {
                name: "carol".into(),
                listen: None,
            })
        );
        assert_eq!(transcript.iter().filter(|l| l.starts_with("? ")).count(), 1);
    }

    #[test]
    fn giving_up_returns_none() {
        assert_eq!(run(vec!["bob"], false).0, None);
    }

    #[test]
    fn no_default_name_means_a_name_is_needed() {
        assert!(parse_name("", None)
            .unwrap_err()
            .contains("a name is needed"));
        assert_eq!(parse_name("", Some("dora")).unwrap(), "dora");
    }
}
