package server

import "context"

// startRetention runs the audit log's retention sweep until stopRetention.
func (g *Gateway) startRetention() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	g.retentionStop, g.retentionDone = cancel, done
	go func() {
		defer close(done)
		g.audit.RunRetention(ctx, g.cfg.Audit.Retention, g.clock, g.log.With("component", "audit"))
	}()
}

// stopRetention ends the sweep and waits for it (a sweep in progress stops between
// transactions).
func (g *Gateway) stopRetention() {
	if g.retentionStop != nil {
		g.retentionStop()
		<-g.retentionDone
	}
}
