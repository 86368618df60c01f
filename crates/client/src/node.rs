//! The typed client of a node: `grid.node(twin).call::<Get>(&body)` sends a command of the
//! node protocol ([`zos_types::node_api`]) through the relay and decodes the command's answer
//! type; a refusal is [`ClientError::Remote`] with its [`zos_types::node_api::ErrorKind`].
//!
//! [`NodeClient::all`] follows the pages of a list command ([`Paged`]): it asks page after
//! page, each with `cursor` set to the key of the last item it got, until a page comes back
//! empty. A node from before paging answers the whole list to the first call and refuses the
//! cursor of the second (or ignores it): that ends the list too.

use zos_types::TwinId;
use zos_types::node_api::{NodeCommand, Paged};

use crate::{ClientError, GridClient};

/// The node with twin `twin`, reached through `grid`'s relay.
#[derive(Debug, Clone, Copy)]
pub struct NodeClient<'a> {
    pub(crate) grid: &'a GridClient,
    pub(crate) twin: TwinId,
}

impl NodeClient<'_> {
    /// The node's twin.
    pub fn twin(&self) -> TwinId {
        self.twin
    }

    /// Sends command `C` with `body` and answers its answer.
    pub async fn call<C: NodeCommand>(&self, body: &C::Body) -> Result<C::Answer, ClientError> {
        let v = self.grid.call(self.twin, C::NAME, body).await?;
        serde_json::from_value(v).map_err(|source| ClientError::Answer {
            command: C::NAME,
            source,
        })
    }

    /// Every item of list command `C` from `body` on (its `cursor`, if set, is the start).
    pub async fn all<C: Paged>(&self, mut body: C::Body) -> Result<Vec<C::Item>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page = match self.call::<C>(&body).await {
                // A node from before paging answered the whole list at once.
                Err(ClientError::Remote(e))
                    if C::cursor(&body).is_some()
                        && e.message.contains("unknown field `cursor`") =>
                {
                    return Ok(all);
                }
                r => r?,
            };
            let Some(next) = page.last().map(C::key) else {
                return Ok(all);
            };
            if C::cursor(&body) == Some(next) {
                // No progress: the node ignores the cursor (an older node); stop here.
                return Ok(all);
            }
            all.extend(page);
            C::set_cursor(&mut body, next);
        }
    }
}
