package keys

import (
	"context"
	"encoding/json"
	"time"

	"telematics/gateway/kv"
)

// After a broker restart the broker holds no retained whitelist, and every replica of a
// cluster reconnects. One of them republishes, not each: the replicas share a claim record
// (republish/whitelists) in the store. A replica that reconnects at a time when its previous
// connection was lost at lostAt
//   - skips, if a republish that started at or after lostAt is done: it ran on the broker as
//     it is now (it started after this replica saw the old connection go);
//   - waits, if such a republish is under way and its claim has not lapsed; then decides
//     again;
//   - otherwise claims the record (one Update: of two replicas claiming at once, one commits,
//     the other's retry sees the claim) and republishes every car's newest whitelist,
//     renewing the claim as it goes, and marks the claim done.
//
// A replica that dies mid-way stops renewing: its claim lapses after republishClaimTTL and a
// waiting replica takes over (cars published twice then, which is harmless: the newest version
// is what the store holds). Times are the replicas' clocks; a skew between them, or a lost
// connection noticed late (keep-alive), can make a second replica republish, never none.

var (
	bucketRepublish = []byte("republish")
	keyRepublish    = []byte("whitelists")
)

const (
	// republishClaimTTL is how long a claim lasts without renewal.
	republishClaimTTL = 30 * time.Second
	// republishBatch is how many cars are published between two renewals of the claim.
	republishBatch = 100
	// republishPoll is how often a waiting replica reads the claim again.
	republishPoll = 500 * time.Millisecond
)

// republishClaim is the cluster's record of its latest republish.
type republishClaim struct {
	Replica     string `json:"replica"`
	StartedAtMs int64  `json:"started_at"`
	ExpiresAtMs int64  `json:"expires_at"` // the claim lapses then unless renewed or done
	DoneAtMs    int64  `json:"done_at"`    // 0: under way
}

// republishStep is what a replica does next.
type republishStep int

const (
	republishSkip republishStep = iota
	republishWait
	republishRun
)

// RepublishAfterReconnect republishes every car's whitelist after the bus reconnected, unless
// another replica (named otherwise than replica) does it for the same broker: see above.
// lostAt is when the previous connection was lost. It returns how many cars this replica
// published (0 when another did). On a store of its own (one gateway) it is PublishAll.
func (s *Service) RepublishAfterReconnect(ctx context.Context, replica string, lostAt time.Time) (int, error) {
	if !s.st.Shared() {
		return s.PublishAll(ctx), nil
	}
	for {
		step, claim, err := s.claimRepublish(ctx, replica, lostAt.UnixMilli())
		if err != nil {
			return 0, err
		}
		switch step {
		case republishSkip:
			s.log.Debug("whitelists republished by another replica", "replica", claim.Replica)
			return 0, nil
		case republishRun:
			return s.republish(ctx, replica, claim)
		}
		t, c := s.clk.NewTimer(republishPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		case <-c:
		}
	}
}

// claimRepublish decides the next step and, for republishRun, takes the claim.
func (s *Service) claimRepublish(ctx context.Context, replica string, lostAtMs int64) (republishStep, republishClaim, error) {
	var step republishStep
	var claim republishClaim
	err := s.st.Update(ctx, func(tx kv.Tx) error {
		nowMs := s.clk.Now().UnixMilli()
		claim = republishClaim{}
		v, err := tx.Get(bucketRepublish, keyRepublish)
		if err != nil {
			return err
		}
		if v != nil {
			if err := json.Unmarshal(v, &claim); err != nil {
				s.log.Warn("unreadable republish claim; taking it over", "err", err)
				claim = republishClaim{}
			}
		}
		if claim.StartedAtMs >= lostAtMs && claim.Replica != "" {
			if claim.DoneAtMs != 0 {
				step = republishSkip
				return nil
			}
			if nowMs < claim.ExpiresAtMs {
				step = republishWait
				return nil
			}
		}
		step = republishRun
		claim = republishClaim{Replica: replica, StartedAtMs: nowMs, ExpiresAtMs: nowMs + republishClaimTTL.Milliseconds()}
		b, err := json.Marshal(claim)
		if err != nil {
			return err
		}
		return tx.Put(bucketRepublish, keyRepublish, b)
	})
	return step, claim, err
}

// republish publishes every car's newest whitelist under claim, renewing it every
// republishBatch cars, and marks it done. It stops when the claim is no longer its own (it
// lapsed and another replica took over).
func (s *Service) republish(ctx context.Context, replica string, claim republishClaim) (int, error) {
	if err := s.reload(); err != nil {
		s.log.Warn("whitelists not reloaded from the store before publishing", "err", err)
	}
	vins := s.vins()
	n := 0
	for n < len(vins) {
		end := min(n+republishBatch, len(vins))
		s.publishVINs(ctx, vins[n:end])
		n = end
		done := n == len(vins)
		mine, err := s.renewRepublish(ctx, replica, &claim, done)
		if err != nil {
			return n, err
		}
		if !mine {
			s.log.Warn("republish claim lapsed and taken over by another replica", "published", n)
			return n, nil
		}
	}
	if len(vins) == 0 {
		if _, err := s.renewRepublish(ctx, replica, &claim, true); err != nil {
			return 0, err
		}
	}
	s.log.Info("whitelists republished after a broker reconnect", "cars", n)
	return n, nil
}

// renewRepublish extends claim (or marks it done); false when the stored claim is no longer
// this one.
func (s *Service) renewRepublish(ctx context.Context, replica string, claim *republishClaim, done bool) (bool, error) {
	mine := false
	next := *claim
	err := s.st.Update(ctx, func(tx kv.Tx) error {
		mine = false
		v, err := tx.Get(bucketRepublish, keyRepublish)
		if err != nil || v == nil {
			return err
		}
		var cur republishClaim
		if err := json.Unmarshal(v, &cur); err != nil || cur.Replica != replica || cur.StartedAtMs != claim.StartedAtMs {
			return nil
		}
		nowMs := s.clk.Now().UnixMilli()
		next = cur
		next.ExpiresAtMs = nowMs + republishClaimTTL.Milliseconds()
		if done {
			next.DoneAtMs = nowMs
		}
		b, err := json.Marshal(next)
		if err != nil {
			return err
		}
		mine = true
		return tx.Put(bucketRepublish, keyRepublish, b)
	})
	if mine {
		*claim = next
	}
	return mine, err
}
