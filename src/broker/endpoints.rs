//! The broker nodes of `AMQP_URL`: a comma-separated list of AMQP URLs (the nodes of a
//! cluster, or one broker). Parsed once at start-up so a typo fails the start with the
//! position of the bad entry, and named in logs, `/readyz` and the console as
//! `host:port/vhost`: the password never leaves this module.

use std::fmt;

use lapin::uri::AMQPUri;

/// One broker node: the URL lapin connects with and the name shown to people.
#[derive(Clone)]
pub struct Endpoint {
    /// The parsed URL, credentials included; only handed to lapin.
    uri: AMQPUri,
    /// `host:port/vhost` (vhost percent-encoded as in the URL): safe to log and show.
    name: String,
}

impl Endpoint {
    /// `host:port/vhost`, without user or password.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL with its credentials, for lapin only.
    pub(super) fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }
}

/// `Debug` shows the name only, so a stray `{:?}` cannot log a password.
impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Endpoint").field(&self.name).finish()
    }
}

/// Every node of `AMQP_URL`, in the order given (never empty).
#[derive(Debug, Clone)]
pub struct Endpoints(Vec<Endpoint>);

/// Why `AMQP_URL` was refused. Never contains the entry itself: it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No URL at all.
    #[error("AMQP_URL is empty: give one or more amqp:// URLs separated by commas")]
    Empty,
    /// Entry `position` (1-based) is not a usable AMQP URL.
    #[error("AMQP_URL entry {position} of {count} is not a valid AMQP URL: {reason}")]
    Invalid {
        /// 1-based position of the bad entry in the list.
        position: usize,
        /// How many entries the list has.
        count: usize,
        /// What is wrong, in words that do not repeat the entry.
        reason: String,
    },
}

impl Endpoints {
    /// Parses a comma-separated list; blanks around entries are ignored, empty entries
    /// (`a,,b`, a trailing comma) are refused with their position.
    pub fn parse(list: &str) -> Result<Self, EndpointError> {
        if list.trim().is_empty() {
            return Err(EndpointError::Empty);
        }
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        let count = entries.len();
        let endpoints = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                parse_one(entry).map_err(|reason| EndpointError::Invalid {
                    position: index + 1,
                    count,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(endpoints))
    }

    /// How many nodes the list names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: `parse` refuses an empty list. (Here for clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The node at `index` modulo the list's length, so a cursor can simply count up.
    pub fn get(&self, index: usize) -> &Endpoint {
        &self.0[index % self.0.len()]
    }

    /// The names of every node, in order (for the start-up log line).
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(Endpoint::name).collect()
    }
}

fn parse_one(entry: &str) -> Result<Endpoint, String> {
    if entry.is_empty() {
        return Err("the entry is empty".into());
    }
    let scheme = entry.split("://").next().unwrap_or_default();
    if !entry.contains("://") || !["amqp", "amqps"].contains(&scheme) {
        return Err("it must start with amqp:// or amqps://".into());
    }
    let uri: AMQPUri = entry.parse().map_err(|error: String| {
        // lapin's messages may quote the whole URL; keep them only when they do not.
        if error.contains(entry) || entry.split('@').next().is_some_and(|u| error.contains(u)) {
            "it cannot be parsed as a URL".to_owned()
        } else {
            error
        }
    })?;
    if uri.authority.host.is_empty() {
        return Err("it names no host".into());
    }
    let vhost = if uri.vhost == "/" {
        "%2f".to_owned()
    } else {
        uri.vhost.clone()
    };
    let name = format!("{}:{}/{vhost}", uri.authority.host, uri.authority.port);
    Ok(Endpoint { uri, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_a_list_of_one_named_without_credentials() {
        let nodes = Endpoints::parse("amqp://guest:s3cret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes.get(0).name(), "127.0.0.1:5672/%2f");
        assert!(!format!("{:?}", nodes).contains("s3cret"));
        assert_eq!(nodes.get(0).uri().authority.userinfo.password, "s3cret");
    }

    #[test]
    fn a_comma_separated_list_keeps_its_order_and_ignores_blanks() {
        let nodes = Endpoints::parse(
            "amqp://u:p@127.0.0.1:5681/%2f, amqp://u:p@127.0.0.1:5682/%2f ,amqp://u:p@rabbit-3/prod",
        )
        .unwrap();
        assert_eq!(
            nodes.names(),
            [
                "127.0.0.1:5681/%2f",
                "127.0.0.1:5682/%2f",
                "rabbit-3:5672/prod"
            ]
        );
        assert_eq!(nodes.get(4).name(), "127.0.0.1:5682/%2f", "the index wraps");
    }

    #[test]
    fn a_bad_entry_is_named_by_its_position_never_by_its_password() {
        let cases = [
            ("amqp://u:hunter2@a:5672/%2f,http://u:hunter2@b/", 2),
            ("amqp://u:hunter2@a:5672/%2f,,amqp://c/", 2),
            ("amqp://u:hunter2@a:5672/%2f,", 2),
            ("u:hunter2@a:5672", 1),
            ("amqp://u:hunter2@a:notaport/%2f", 1),
            ("amqp://u:hunter2@a/%2f?heartbeat=often", 1),
        ];
        for (list, position) in cases {
            let error = Endpoints::parse(list).unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(error, EndpointError::Invalid { position: p, .. } if p == position),
                "{list}: {text}"
            );
            assert!(text.contains(&format!("entry {position} of")), "{text}");
            assert!(!text.contains("hunter2"), "the password leaked: {text}");
        }
    }

    #[test]
    fn an_empty_list_is_refused() {
        assert_eq!(Endpoints::parse(" ").unwrap_err(), EndpointError::Empty);
    }
}
