package server

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"telematics/gateway/commands"
	"telematics/gateway/keys"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
)

// StoreURL is a parsed `store` setting.
type StoreURL struct {
	// BoltPath is the bbolt file ("" with the default: DATA/gateway.db).
	BoltPath string
	// Etcd are the etcd members' client URLs (http://HOST:PORT); nil for bbolt.
	Etcd []string
}

// maxEtcdEndpoints bounds the members one setting names (a cluster has 3, 5 or 7).
const maxEtcdEndpoints = 16

// ParseStoreURL parses the `store` setting: "" (the default file), bbolt://PATH or
// etcd://HOST:PORT[,HOST:PORT...].
func ParseStoreURL(s string) (StoreURL, error) {
	switch {
	case s == "":
		return StoreURL{}, nil
	case strings.HasPrefix(s, "bbolt://"):
		p := strings.TrimPrefix(s, "bbolt://")
		if p == "" {
			return StoreURL{}, fmt.Errorf("%q names no file: bbolt://PATH", s)
		}
		return StoreURL{BoltPath: p}, nil
	case strings.HasPrefix(s, "etcd://"):
		hosts := strings.Split(strings.TrimSuffix(strings.TrimPrefix(s, "etcd://"), "/"), ",")
		if len(hosts) > maxEtcdEndpoints {
			return StoreURL{}, fmt.Errorf("%d etcd endpoints, at most %d", len(hosts), maxEtcdEndpoints)
		}
		var out StoreURL
		for _, h := range hosts {
			host, port, err := net.SplitHostPort(h)
			if err != nil || host == "" {
				return StoreURL{}, fmt.Errorf("%q in %q is not HOST:PORT (etcd://HOST:PORT[,HOST:PORT...])", h, s)
			}
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return StoreURL{}, fmt.Errorf("%q in %q has no valid port (1..65535)", h, s)
			}
			out.Etcd = append(out.Etcd, "http://"+h)
		}
		return out, nil
	default:
		return StoreURL{}, errors.New("must be bbolt://PATH or etcd://HOST:PORT[,HOST:PORT...] (empty: DATA/gateway.db)")
	}
}

// etcdTimeout bounds one store transaction on etcd, all its attempts included: an etcd that
// does not answer makes the request fail with `internal` after this long, not hang.
const etcdTimeout = 5 * time.Second

// cachedBuckets are the buckets a replica keeps a watched copy of (etcdkv.Options.Cache):
// those a command's decision and its result's claim read, named by the packages that own
// them, so that an Update reads them without a round trip each and its commit's compares
// catch a copy that is behind. They are small: one record per user, car, command in flight or
// id of the last minute. Not the audit log, the journal, the twin or the cars' keys, which
// grow or are written in bulk.
var cachedBuckets = slices.Concat(commands.CachedBuckets, store.CachedBuckets, keys.CachedBuckets, twofa.CachedBuckets)

// openStore opens the store cfg names. On etcd an unreachable cluster is an error within
// etcdTimeout.
func openStore(cfg Config) (*store.Store, error) {
	u, err := ParseStoreURL(cfg.Store)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if u.Etcd == nil {
		path := u.BoltPath
		if path == "" {
			path = filepath.Join(cfg.Data, DBFile)
		}
		return store.Open(path)
	}
	kvs, err := etcdkv.Open(etcdkv.Options{Endpoints: u.Etcd, Prefix: cfg.StorePrefix, Timeout: etcdTimeout, Cache: cachedBuckets})
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", cfg.Store, err)
	}
	st, err := store.OpenKV(kvs)
	if err != nil {
		return nil, fmt.Errorf("store %s (prefix %s): %w (is etcd running and reachable?)", cfg.Store, cfg.StorePrefix, err)
	}
	return st, nil
}
