package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"telematics/pkg/clock"
	"time"

	"telematics/gateway/kv"
)

// Retention bounds how much of the past the log keeps. The yaml tags are the keys under the
// gateway configuration's "audit.retention" section. A zero bound does not apply.
type Retention struct {
	// MaxAge: records older than this are deleted.
	MaxAge time.Duration `yaml:"max_age" env:"GATEWAY_AUDIT_MAX_AGE"`
	// MaxRecords: beyond this many records, the oldest are deleted.
	MaxRecords int `yaml:"max_records" env:"GATEWAY_AUDIT_MAX_RECORDS"`
	// SweepInterval is how often the bounds are enforced.
	SweepInterval time.Duration `yaml:"sweep_interval" env:"GATEWAY_AUDIT_SWEEP_INTERVAL"`
}

// DefaultRetention: 90 days, at most 10 million records (a few GB at most: each record is at
// most MaxRecordBytes, typically 200-400 bytes), enforced every minute.
func DefaultRetention() Retention {
	return Retention{MaxAge: 90 * 24 * time.Hour, MaxRecords: 10_000_000, SweepInterval: time.Minute}
}

// Validate reports every problem at once, each with its key.
func (r Retention) Validate() error {
	var errs []error
	if r.MaxAge < 0 {
		errs = append(errs, fmt.Errorf("audit.retention.max_age: %v is negative (0 keeps records of any age)", r.MaxAge))
	} else if r.MaxAge > 0 && r.MaxAge < time.Hour {
		errs = append(errs, fmt.Errorf("audit.retention.max_age: %v is less than 1h", r.MaxAge))
	}
	if r.MaxRecords < 0 {
		errs = append(errs, fmt.Errorf("audit.retention.max_records: %d is negative (0 keeps any number)", r.MaxRecords))
	}
	if r.SweepInterval < time.Second {
		errs = append(errs, fmt.Errorf("audit.retention.sweep_interval: %v is less than 1s", r.SweepInterval))
	}
	return errors.Join(errs...)
}

// pruneBatch bounds the records one sweep transaction deletes, so a sweep that has much to do
// (the first one after the bounds were lowered) never holds the writer for long, and one
// transaction stays within what etcd carries (--max-txn-ops, 128 by default: each record
// deleted is one compare and one delete).
const pruneBatch = 100

// Prune deletes the oldest records until the log meets r at now: first those beyond
// MaxRecords, then, in sequence order, those older than MaxAge (it stops at the first record
// young enough, so a record stamped earlier than one before it waits for that one). It works
// in transactions of at most pruneBatch deletions and returns how many it deleted.
func (l *Log) Prune(ctx context.Context, r Retention, now time.Time) (int, error) {
	cutoffMs := int64(0)
	if r.MaxAge > 0 {
		cutoffMs = now.Add(-r.MaxAge).UnixMilli()
	}
	if err := l.moveInbox(ctx); err != nil {
		return 0, fmt.Errorf("prune audit log: %w", err)
	}
	total := 0
	for ctx.Err() == nil {
		var n int
		err := l.kv.Update(ctx, func(tx kv.Tx) error {
			n = 0 // Update may run this function again: set, not added to
			first, err := firstSeq(tx)
			if err != nil || first == 0 {
				return err
			}
			last, err := tx.Sequence(bucketAudit)
			if err != nil {
				return err
			}
			// Records are keyed by their sequence and only ever deleted from the front: the
			// keys from first to last are contiguous.
			count := int64(last-first) + 1
			excess := int64(0)
			if r.MaxRecords > 0 && count > int64(r.MaxRecords) {
				excess = count - int64(r.MaxRecords)
			}
			// Collected first, deleted after: a Scan callback must not write.
			var dead [][]byte
			err = tx.Scan(bucketAudit, nil, nil, func(k, v []byte) error {
				if len(dead) >= pruneBatch {
					return kv.Stop
				}
				if int64(len(dead)) >= excess {
					if cutoffMs == 0 {
						return kv.Stop
					}
					var e struct {
						TsMs int64 `json:"ts"`
					}
					if err := json.Unmarshal(v, &e); err == nil && e.TsMs >= cutoffMs {
						return kv.Stop
					}
				}
				dead = append(dead, bytes.Clone(k))
				return nil
			})
			if err != nil {
				return err
			}
			for _, k := range dead {
				if err := tx.Delete(bucketAudit, k); err != nil {
					return err
				}
			}
			n = len(dead)
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("prune audit log: %w", err)
		}
		total += n
		if n < pruneBatch {
			break
		}
	}
	return total, nil
}

// RunRetention enforces r at once and then every r.SweepInterval of clk (nil: the real clock)
// until ctx ends; errors go to log. It returns at once if r sets no bound.
func (l *Log) RunRetention(ctx context.Context, r Retention, clk clock.Clock, log *slog.Logger) {
	if r.MaxAge <= 0 && r.MaxRecords <= 0 {
		return
	}
	clk = clock.Or(clk)
	t, tick := clk.NewTicker(r.SweepInterval)
	defer t.Stop()
	for {
		if n, err := l.Prune(ctx, r, clk.Now()); err != nil {
			log.Error("audit retention", "err", err)
		} else if n > 0 {
			log.Info("audit retention deleted old records", "records", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
	}
}
