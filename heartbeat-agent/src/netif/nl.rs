//! The network manager's rtnetlink side: card lookup, the link
//! notifications it watches (carrier loss is seen as the kernel reports
//! it), and moving a card's addresses and routes to the other card.
//!
//! One request connection (its task spawned on the runtime, ended on drop,
//! as firezone's tun device manager does) and one multicast connection on
//! `RTNLGRP_LINK` (`ip monitor link`).

use std::net::IpAddr;

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
        link::{LinkAttribute, LinkFlags, LinkMessage},
        route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
    },
};
use tokio::sync::mpsc;

/// A netlink failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// What the kernel says about a card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardInfo {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// Administratively up and with carrier.
    pub carrier: bool,
}

/// A link notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkNote {
    /// A card appeared or changed.
    Changed(CardInfo),
    /// A card was deleted.
    Deleted { name: String, index: u32 },
}

fn info(msg: &LinkMessage) -> Option<CardInfo> {
    let mut name = None;
    let mut mac = [0u8; 6];
    let mut carrier = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(m) => {
                if let Ok(m) = <[u8; 6]>::try_from(m.as_slice()) {
                    mac = m;
                }
            }
            LinkAttribute::Carrier(c) => carrier = Some(*c != 0),
            _ => {}
        }
    }
    let flags = msg.header.flags;
    let up = flags.contains(LinkFlags::Up);
    let carrier = carrier.unwrap_or_else(|| flags.contains(LinkFlags::LowerUp));
    Some(CardInfo {
        name: name?,
        index: msg.header.index,
        mac,
        carrier: up && carrier,
    })
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NlError {
    let what = what.into();
    move |source| NlError::Netlink { what, source }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// The request connection.
pub struct Nl {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Nl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address as found on a card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardAddress {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Nl {
    /// Opens the connection in the calling thread's network namespace
    /// (within a tokio runtime).
    pub fn new() -> Result<Self, NlError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NlError::Io {
            what: "opening an rtnetlink socket",
            source,
        })?;
        Ok(Self {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// The card named `name`, if it exists.
    pub async fn card(&self, name: &str) -> Result<Option<CardInfo>, NlError> {
        let r = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match r {
            Ok(Some(m)) => Ok(info(&m)),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("looking up {name}"))(e)),
        }
    }

    /// The addresses of card `index` that move with the link: every
    /// address but link-local ones (the card's own).
    pub async fn addresses(
        &self,
        index: u32,
    ) -> Result<Vec<(CardAddress, AddressMessage)>, NlError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing addresses"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index && m.header.scope != AddressScope::Link)
            .filter_map(|m| {
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some((
                    CardAddress {
                        addr,
                        prefix: m.header.prefix_len,
                    },
                    m,
                ))
            })
            .collect())
    }

    /// Adds `a` to card `index` (IPv6 without duplicate address detection:
    /// the address is ours, moving). Already there is not an error.
    pub async fn add_address(&self, index: u32, a: &CardAddress) -> Result<(), NlError> {
        let mut req = self.handle.address().add(index, a.addr, a.prefix);
        if a.addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err(format!("adding {}/{}", a.addr, a.prefix))(e)),
        }
    }

    /// Removes an address found by [`Nl::addresses`]; gone already is not
    /// an error.
    pub async fn del_address(&self, msg: AddressMessage) -> Result<(), NlError> {
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) || is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(nl_err("removing an address")(e)),
        }
    }

    /// The routes that leave through card `index` and do not come and go
    /// with its addresses (the kernel's own prefix and local routes move
    /// with the addresses): static, boot and daemon routes of the main
    /// and other tables, IPv4 and IPv6.
    pub async fn routes(&self, index: u32) -> Result<Vec<RouteMessage>, NlError> {
        let mut out = Vec::new();
        for msg in [
            rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(nl_err("listing routes"))?;
            out.extend(routes.into_iter().filter(|r| {
                r.header.protocol != RouteProtocol::Kernel
                    && r.header.scope != RouteScope::Host
                    && r.attributes.contains(&RouteAttribute::Oif(index))
            }));
        }
        Ok(out)
    }

    /// Re-adds `route` through card `to`, then removes it from its old
    /// card.
    pub async fn move_route(&self, route: RouteMessage, to: u32) -> Result<(), NlError> {
        let mut new = route.clone();
        for a in &mut new.attributes {
            if let RouteAttribute::Oif(i) = a {
                *i = to;
            }
        }
        match self.handle.route().add(new).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(nl_err("adding a route")(e)),
        }
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(nl_err("removing a route")(e)),
        }
    }
}

/// Watches link notifications (`RTNLGRP_LINK`) and sends them to `out`
/// until the receiver is dropped. The returned handle ends the connection
/// when aborted.
pub fn watch_links(
    out: mpsc::UnboundedSender<LinkNote>,
) -> Result<tokio::task::JoinHandle<()>, NlError> {
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(|source| {
            NlError::Io {
                what: "subscribing to link notifications",
                source,
            }
        })?;
    Ok(tokio::spawn(async move {
        let conn = tokio::spawn(conn);
        while let Some((msg, _)) = messages.next().await {
            let note = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    info(&m).map(LinkNote::Changed)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    info(&m).map(|i| LinkNote::Deleted {
                        name: i.name,
                        index: i.index,
                    })
                }
                _ => None,
            };
            if let Some(n) = note
                && out.send(n).is_err()
            {
                break;
            }
        }
        conn.abort();
    }))
}
