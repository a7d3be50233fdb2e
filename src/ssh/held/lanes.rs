//! The holder's connections to the instance. sshd lets one connection hold ten sessions
//! (`MaxSessions`), and a run opens several channels at once: a few runs at once through one
//! connection would run out of them. The first connection is the one the card describes; when
//! each one's sessions are in use, another is dialled beside it, kept until the holder ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use crate::printer::Printer;
use crate::ssh::channels::Channel;
use crate::ssh::{Session, Target};

/// How long the holder may take to connect: the instance ran a moment ago.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The runs' session channels on one connection: sshd's default ten, less those it opens ahead
/// and one to spare.
const SESSIONS_PER_LANE: usize = 6;

/// Channels each connection keeps opened ahead: a run opens several at once as it starts and
/// ends, each then a local round trip only.
const OPENED_AHEAD: usize = 3;

pub(super) struct Lanes {
    target: Target,
    printer: Printer,
    lanes: Mutex<Vec<Lane>>,
    first: Arc<Session>,
}

struct Lane {
    session: Arc<Session>,
    room: Arc<Semaphore>,
}

impl Lanes {
    /// The first connection to `target`.
    pub async fn dial(target: Target, printer: Printer) -> Result<Lanes> {
        let first = Lanes::connect(&target, &printer).await?;
        Ok(Lanes {
            lanes: Mutex::new(vec![Lane::of(first.clone())]),
            first,
            target,
            printer,
        })
    }

    async fn connect(target: &Target, printer: &Printer) -> Result<Arc<Session>> {
        let phase = printer.phase("keeping the connection");
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let session = Session::connect(target, deadline, &phase).await?;
        session.keep_ahead(OPENED_AHEAD);
        Ok(Arc::new(session))
    }

    /// The connection the card describes, which the holder lives by.
    pub fn first(&self) -> &Arc<Session> {
        &self.first
    }

    /// A session channel on a connection with room for it (another dialled when none has);
    /// the room is taken until the permit is dropped, with the channel.
    pub async fn session_channel(&self) -> Result<(Channel, OwnedSemaphorePermit)> {
        let mut lanes = self.lanes.lock().await;
        let mut open = lanes.iter().filter(|lane| !lane.session.is_closed());
        let free = open.find_map(|lane| {
            let permit = lane.room.clone().try_acquire_owned().ok()?;
            Some((lane.session.clone(), permit))
        });
        let (session, permit) = match free {
            Some(free) => free,
            None => {
                let lane = Lane::of(Lanes::connect(&self.target, &self.printer).await?);
                let permit = lane.room.clone().try_acquire_owned()?;
                let session = lane.session.clone();
                lanes.push(lane);
                (session, permit)
            }
        };
        drop(lanes);
        Ok((session.open_channel().await?, permit))
    }

    pub async fn close(&self) {
        for lane in self.lanes.lock().await.iter() {
            lane.session.close().await;
        }
    }
}

impl Lane {
    fn of(session: Arc<Session>) -> Lane {
        Lane {
            session,
            room: Arc::new(Semaphore::new(SESSIONS_PER_LANE)),
        }
    }
}
