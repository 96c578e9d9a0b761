package etcdkv

import (
	"context"
	"errors"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"telematics/gateway/kv"
)

// The server's time-outs come back as errors of their own, sometimes before the client's
// bound passed (seen under -race with quorum lost): they mean unavailable, as the bound does.
func TestServerTimeoutsAreUnavailable(t *testing.T) {
	s := &Store{opts: Options{Endpoints: []string{"http://127.0.0.1:1"}}}
	for _, err := range []error{rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail,
		rpctypes.ErrTimeoutDueToConnectionLost, rpctypes.ErrLeaderChanged, rpctypes.ErrNoLeader} {
		if got := s.unavailable(context.Background(), err); !errors.Is(got, kv.ErrUnavailable) {
			t.Errorf("%v: %v, want kv.ErrUnavailable", err, got)
		}
	}
}
