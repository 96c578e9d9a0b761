package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// ackTimeout bounds the wait for the cars' acknowledgements of the revocations; revokePoll is
// how often the bench looks.
const (
	ackTimeout = 2 * time.Minute
	revokePoll = 200 * time.Millisecond
)

// runRevoke gives every car a second key: each owner shares the car with one more user (a
// driver who has cars of many owners: a family member, a fleet's driver), who enrolls TOTP and
// pairs one phone key with every car. Once every car acknowledged the whitelist holding both
// keys, each owner revokes the shared key (POST /v1/keys/revoke on the session their pairing
// elevated), cfg.Concurrency revocations in flight at once, and the bench waits until every car
// acknowledged the new version. Per car, revoke → ack is from the owner's request to the
// gateway's record of the car's acknowledgement (acked_ts, same machine); the total is from the
// first request to the last acknowledgement.
func runRevoke(ctx context.Context, w *keyWorld, m *measure, res *Result) error {
	r, cfg := w.r, w.r.cfg
	friend, err := w.newPerson(ctx, fmt.Sprintf("bench%s_driver", w.runID), "")
	if err != nil {
		return err
	}
	// The owners' pairings elevated their login sessions: sharing needs no new code.
	shares, sctx := errgroup.WithContext(ctx)
	shares.SetLimit(cfg.SetupConcurrency)
	for _, o := range w.owners {
		shares.Go(func() error {
			_, err := o.sess.Client().ShareKey(sctx, api.ShareRequest{VIN: o.vin, User: friend.name, Role: protocol.RoleDriver})
			if err != nil {
				return fmt.Errorf("%s shares %s: %w", o.name, o.vin, err)
			}
			return nil
		})
	}
	if err := shares.Wait(); err != nil {
		return err
	}
	// The driver's first pairing takes a code and elevates the session for the others.
	if err := friend.pair(ctx, w.owners[0].vin, true); err != nil {
		return err
	}
	pairs, pctx := errgroup.WithContext(ctx)
	pairs.SetLimit(cfg.SetupConcurrency)
	for _, o := range w.owners[1:] {
		pairs.Go(func() error { return friend.pair(pctx, o.vin, false) })
	}
	if err := pairs.Wait(); err != nil {
		return err
	}
	if err := w.waitCars(ctx, "acknowledged their whitelists", 2*time.Minute, synced); err != nil {
		return err
	}
	sharedKey := friend.key.KID()
	r.logf("%d cars hold an owner key and %s's key %s; revoking it on every car, %d at a time",
		len(w.owners), friend.name, sharedKey, cfg.Concurrency)

	type revocation struct {
		req, resp time.Time
		version   uint64
		ackedMs   int64
		acked     bool
	}
	out := make([]revocation, len(w.owners))
	var errs errorCounts
	var retried atomic.Int64
	if err := m.begin(ctx); err != nil {
		return err
	}
	res.SetupS = time.Since(m.setupStart).Seconds()
	t0 := time.Now()
	revokes, rctx := errgroup.WithContext(ctx)
	revokes.SetLimit(cfg.Concurrency)
	for i, o := range w.owners {
		revokes.Go(func() error {
			out[i].req = time.Now()
			rev, err := o.sess.Client().RevokeKey(rctx, api.RevokeRequest{VIN: o.vin, KeyID: sharedKey})
			var ae *api.Error
			if errors.As(err, &ae) && ae.Reason == protocol.ReasonTOTPRequired {
				// The step-up lapsed (a long setup): the owner types a code.
				retried.Add(1)
				code, cerr := o.code()
				if cerr != nil {
					return cerr
				}
				rev, err = o.sess.Client().RevokeKey(rctx, api.RevokeRequest{VIN: o.vin, KeyID: sharedKey, TOTP: code})
			}
			out[i].resp = time.Now()
			if err != nil {
				errs.addErr(err)
				return nil
			}
			out[i].version = rev.Version
			return nil
		})
	}
	_ = revokes.Wait()
	answered := time.Now()
	req := newLatency()
	pending := 0
	for _, o := range out {
		if o.version > 0 {
			req.record(o.resp.Sub(o.req))
			pending++
		}
	}
	res.Revoked = pending
	r.logf("%d revocations answered in %.2fs; waiting for the cars' acknowledgements", pending, answered.Sub(t0).Seconds())

	// Poll until every revoked car acknowledged. The figures come from the gateway's acked_ts,
	// so the polling interval does not limit their precision; it is long because each poll has
	// the gateway encode every car's keys (~1 KB a car), on the cores it acknowledges with.
	var lastSeen time.Time
	deadline := time.Now().Add(ackTimeout)
	for pending > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		vs, err := w.views(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		for i := range out {
			o := &out[i]
			if o.version == 0 || o.acked {
				continue
			}
			if v := vs[w.owners[i].vin]; v.Keys != nil && v.Keys.AckedVersion >= o.version {
				o.acked, o.ackedMs, lastSeen = true, v.Keys.AckedMs, now
				pending--
			}
		}
		if pending > 0 {
			time.Sleep(revokePoll)
		}
	}
	if err := m.end(ctx); err != nil {
		return err
	}
	if pending > 0 {
		errs.addN("not_acknowledged", int64(pending))
	}
	perCar := newLatency()
	var lastAckUs int64
	for _, o := range out {
		if !o.acked {
			continue
		}
		res.AckedCars++
		ackUs := o.ackedMs*1000 + 500 // the middle of the millisecond acked_ts names
		perCar.record(time.Duration(ackUs-o.req.UnixMicro()) * time.Microsecond)
		lastAckUs = max(lastAckUs, ackUs)
	}
	if res.AckedCars > 0 {
		res.DurationS = float64(lastAckUs-t0.UnixMicro()) / 1e6
		res.AllAckedObservedS = lastSeen.Sub(t0).Seconds()
	}
	res.RevokeAnsweredS = answered.Sub(t0).Seconds()
	res.RetriedWithTOTP = int(retried.Load())
	res.ErrorsByReason, res.FirstError = errs.snapshot(), errs.firstError()
	setPercentiles(res, "revoke request → car's acknowledgement", perCar)
	res.RevokeRequestP50Ms, res.RevokeRequestP99Ms = req.percentileMs(50), req.percentileMs(99)
	return nil
}
