//! Which connections the metrics listener keeps, so that a scrape finds a place however many
//! slow clients are connected (issue 21, finding 4).
//!
//! The listener accepts every connection as it comes and asks [`Admission::admit`]:
//! - at most [`MAX_PER_PEER`] connections from one peer (an IPv4 address, an IPv6 /64); one
//!   more is closed at once;
//! - at most [`MAX_CONNECTIONS`] in all; when every place is taken, the new connection takes
//!   the place of the oldest one still sending its request head, or, when every connection
//!   has sent its head, of the oldest one.
//!
//! Accepting at once matters: a connection left in the kernel's accept queue (128 deep, as
//! tokio listens) is one the agent can neither see nor shed, and the probe filled
//! that queue with slow clients until new scrapes were refused.
//!
//! Why shed instead of keeping a place for connections that have sent a complete head: hyper
//! reads a head only on a connection it serves, that is one that already has a place, so a
//! kept place would need a second pool of connections reading their heads, bounded and shed
//! in its turn. Shedding needs one bound. The oldest connection still sending its head has
//! had the longest to send a few hundred bytes, so it is the slowest; the newest is likely a
//! scraper whose whole head is in one segment. A connection past its head is being answered
//! (a scrape takes milliseconds), so one is shed only when every place answers, and then the
//! oldest, most likely a client that does not read its answer.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::oneshot;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Connections served at once from one peer: a quarter of the places, so that one peer
/// leaves room for three others (a Prometheus pair, a `curl`) even before shedding.
pub const MAX_PER_PEER: usize = 4;

/// Why the listener closed a connection before answering it: the `reason` label of
/// `xdp_breakout_listener_shed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// A new connection from a peer that already had [`MAX_PER_PEER`].
    PeerLimit,
    /// Every place was taken: the oldest connection still sending its head made room.
    SlowestHead,
    /// Every place was taken by a connection past its head: the oldest made room.
    Oldest,
    /// The head was not complete within `REQUEST_TIMEOUT`.
    HeadTimeout,
    /// The connection lasted longer than `CONNECTION_TIMEOUT`.
    ConnectionTimeout,
}

impl Shed {
    /// The `reason` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::PeerLimit => "peer_limit",
            Self::SlowestHead => "slowest_head",
            Self::Oldest => "oldest",
            Self::HeadTimeout => "head_timeout",
            Self::ConnectionTimeout => "connection_timeout",
        }
    }
}

/// Connections shed since the agent started, by [`Shed`].
#[derive(Debug, Default)]
pub struct ShedCounts {
    peer_limit: AtomicU64,
    slowest_head: AtomicU64,
    oldest: AtomicU64,
    head_timeout: AtomicU64,
    connection_timeout: AtomicU64,
}

impl ShedCounts {
    fn counter(&self, why: Shed) -> &AtomicU64 {
        match why {
            Shed::PeerLimit => &self.peer_limit,
            Shed::SlowestHead => &self.slowest_head,
            Shed::Oldest => &self.oldest,
            Shed::HeadTimeout => &self.head_timeout,
            Shed::ConnectionTimeout => &self.connection_timeout,
        }
    }

    pub fn count(&self, why: Shed) {
        self.counter(why).fetch_add(1, Ordering::Relaxed);
    }

    /// Every reason with its count, in a fixed order.
    #[must_use]
    pub fn rows(&self) -> [(Shed, u64); 5] {
        // Destructured so that a new reason cannot be left out of the scrape.
        let Self {
            peer_limit,
            slowest_head,
            oldest,
            head_timeout,
            connection_timeout,
        } = self;
        [
            (Shed::PeerLimit, peer_limit),
            (Shed::SlowestHead, slowest_head),
            (Shed::Oldest, oldest),
            (Shed::HeadTimeout, head_timeout),
            (Shed::ConnectionTimeout, connection_timeout),
        ]
        .map(|(why, count)| (why, count.load(Ordering::Relaxed)))
    }
}

/// The places of one listener.
#[derive(Debug, Default)]
pub(super) struct Admission {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// Ids grow with each admission, so the smallest is the oldest connection.
    next_id: u64,
    slots: Vec<Slot>,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    peer: IpAddr,
    /// Its head is complete and it is being answered.
    answering: bool,
    /// Dropping the slot sheds its connection: the task waiting on the receiver wakes.
    _shed: oneshot::Sender<()>,
}

/// What [`Admission::admit`] decided for a new connection.
#[derive(Debug)]
pub(super) enum Admit {
    /// Its peer has [`MAX_PER_PEER`] connections already: close it.
    OverPeerLimit,
    /// Serve it; `made_room` says why another connection was shed for it, if one was.
    Placed {
        place: Place,
        made_room: Option<Shed>,
    },
}

impl Admission {
    /// Gives a connection from `peer` a place, shedding another if every place is taken.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Admit {
        let peer = peer_key(peer);
        let mut table = self.lock();
        if table.slots.iter().filter(|slot| slot.peer == peer).count() >= MAX_PER_PEER {
            return Admit::OverPeerLimit;
        }
        let mut made_room = None;
        if table.slots.len() >= MAX_CONNECTIONS {
            // Slots are in id order: the first one sending its head is the oldest such.
            let (index, why) = table
                .slots
                .iter()
                .position(|slot| !slot.answering)
                .map_or((0, Shed::Oldest), |index| (index, Shed::SlowestHead));
            table.slots.remove(index);
            made_room = Some(why);
        }
        let id = table.next_id;
        table.next_id += 1;
        let (shed, shed_receiver) = oneshot::channel();
        table.slots.push(Slot {
            id,
            peer,
            answering: false,
            _shed: shed,
        });
        Admit::Placed {
            place: Place {
                mark: Mark {
                    admission: Arc::clone(self),
                    id,
                },
                shed: shed_receiver,
            },
            made_room,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table is consistent after every statement that changes it: a panic elsewhere
        // while it was held leaves nothing half done.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The peer a connection counts against: its address, or for IPv6 its /64, which a single
/// host may fill with addresses of its own (RFC 8981 temporary addresses, SLAAC).
fn peer_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// A connection's place; dropping it gives the place back.
#[derive(Debug)]
pub(super) struct Place {
    mark: Mark,
    shed: oneshot::Receiver<()>,
}

impl Place {
    /// What the request handler marks the connection answering with.
    pub(super) fn mark(&self) -> Mark {
        self.mark.clone()
    }

    /// Ready once a newer connection has taken this place.
    pub(super) async fn shed(&mut self) {
        // The sender is never used: only dropped, with the slot.
        let _ = (&mut self.shed).await;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let id = self.mark.id;
        self.mark
            .admission
            .lock()
            .slots
            .retain(|slot| slot.id != id);
    }
}

/// A handle on a connection's place that marks it answering.
#[derive(Clone, Debug)]
pub(super) struct Mark {
    admission: Arc<Admission>,
    id: u64,
}

impl Mark {
    /// The connection's head is complete: it is shed only after every one still sending its
    /// head.
    pub(super) fn answering(&self) {
        if let Some(slot) = self
            .admission
            .lock()
            .slots
            .iter_mut()
            .find(|slot| slot.id == self.id)
        {
            slot.answering = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    fn peer(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[track_caller]
    fn placed(admission: &Arc<Admission>, peer: IpAddr) -> (Place, Option<Shed>) {
        match admission.admit(peer) {
            Admit::Placed { place, made_room } => (place, made_room),
            Admit::OverPeerLimit => panic!("{peer} was refused"),
        }
    }

    fn is_shed(place: &mut Place) -> bool {
        matches!(place.shed.try_recv(), Err(TryRecvError::Closed))
    }

    #[test]
    fn a_peer_gets_at_most_max_per_peer_places_and_a_freed_one_again() {
        let admission = Arc::new(Admission::default());
        let mut places: Vec<_> = (0..MAX_PER_PEER)
            .map(|_| placed(&admission, peer(1)))
            .collect();
        assert!(places.iter().all(|(_, made_room)| made_room.is_none()));
        assert!(matches!(admission.admit(peer(1)), Admit::OverPeerLimit));
        // Another peer is not counted against it.
        let _other = placed(&admission, peer(2));
        places.pop();
        let _again = placed(&admission, peer(1));
        assert!(matches!(admission.admit(peer(1)), Admit::OverPeerLimit));
    }

    #[test]
    fn ipv6_peers_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let admission = Arc::new(Admission::default());
        let _places: Vec<_> = (1..=u16::try_from(MAX_PER_PEER).unwrap())
            .map(|host| {
                placed(
                    &admission,
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, host, 0, 0, 1)),
                )
            })
            .collect();
        let same_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 9));
        assert!(matches!(admission.admit(same_64), Admit::OverPeerLimit));
        let _next_64 = placed(
            &admission,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1)),
        );
        let _v4: Vec<_> = (0..MAX_PER_PEER)
            .map(|_| placed(&admission, peer(1)))
            .collect();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert!(matches!(admission.admit(mapped), Admit::OverPeerLimit));
    }

    #[test]
    fn a_full_table_sheds_the_oldest_sending_its_head_then_the_oldest() {
        let admission = Arc::new(Admission::default());
        // Four peers fill the table; the first three places answer.
        let mut places: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|index| {
                let peer = peer(u8::try_from(index / MAX_PER_PEER).unwrap());
                placed(&admission, peer).0
            })
            .collect();
        for place in &places[..3] {
            place.mark().answering();
        }
        let (mut newcomer, made_room) = placed(&admission, peer(100));
        assert_eq!(made_room, Some(Shed::SlowestHead));
        assert!(is_shed(&mut places[3]), "the oldest sending its head");
        assert!(places.iter_mut().skip(4).all(|place| !is_shed(place)));
        assert!(places.iter_mut().take(3).all(|place| !is_shed(place)));
        // The peer of the shed place may connect again; the next oldest sending its head
        // makes room.
        let (second, made_room) = placed(&admission, peer(0));
        assert_eq!(made_room, Some(Shed::SlowestHead));
        assert!(is_shed(&mut places[4]));
        // Once every place answers, the oldest goes.
        for place in places.iter().skip(5).chain([&newcomer, &second]) {
            place.mark().answering();
        }
        let (_kept, made_room) = placed(&admission, peer(101));
        assert_eq!(made_room, Some(Shed::Oldest));
        assert!(is_shed(&mut places[0]), "the oldest");
        assert!(
            places
                .iter_mut()
                .skip(1)
                .take(2)
                .all(|place| !is_shed(place))
        );
        assert!(places.iter_mut().skip(5).all(|place| !is_shed(place)));
        assert!(!is_shed(&mut newcomer));
        assert_eq!(admission.lock().slots.len(), MAX_CONNECTIONS);
        // A place dropped (its connection ended) is given back: no shedding for the next.
        drop(second);
        let (_, made_room) = placed(&admission, peer(102));
        assert_eq!(made_room, None);
    }
}
