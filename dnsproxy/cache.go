package dnsproxy

import (
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// maxCacheTTL caps how long any answer is kept, whatever its TTL says.
const maxCacheTTL = time.Hour

// cache keeps positive and negative answers for their TTL (RFC 2308 for
// negative ones: the lesser of the SOA's TTL and MINIMUM). Entries are
// stored as the resolver returned them, keyed by the name the client
// asked, and handed out as copies with TTLs aged.
type cache struct {
	mu  sync.Mutex
	max int
	m   map[cacheKey]cacheEntry
	now func() time.Time
}

type cacheKey struct {
	name   string // lower-case FQDN
	qtype  uint16
	qclass uint16
	do     bool // DNSSEC OK: answers differ
}

type cacheEntry struct {
	msg     *dns.Msg
	stored  time.Time
	expires time.Time
}

func newCache(size int) *cache {
	if size < 0 {
		return nil
	}
	if size == 0 {
		size = defaultCacheSize
	}
	return &cache{max: size, m: make(map[cacheKey]cacheEntry), now: time.Now}
}

func keyOf(q dns.Question) cacheKey {
	return cacheKey{name: strings.ToLower(q.Name), qtype: q.Qtype, qclass: q.Qclass}
}

// get returns a copy of the cached answer with TTLs reduced by its age,
// or nil. A nil cache never hits.
func (c *cache) get(k cacheKey) *dns.Msg {
	if c == nil {
		return nil
	}
	now := c.now()
	c.mu.Lock()
	e, ok := c.m[k]
	if ok && !now.Before(e.expires) {
		delete(c.m, k)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return nil
	}
	m := e.msg.Copy()
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			if h.Ttl > age {
				h.Ttl -= age
			} else {
				h.Ttl = 0
			}
		}
	}
	return m
}

// put stores m if it is cacheable: NOERROR with answers, or NXDOMAIN /
// NODATA carrying an SOA. Truncated and failed answers are not kept.
func (c *cache) put(k cacheKey, m *dns.Msg) {
	if c == nil {
		return
	}
	ttl, ok := cacheTTL(m)
	if !ok || ttl <= 0 {
		return
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		c.evictLocked(now)
	}
	c.m[k] = cacheEntry{msg: m.Copy(), stored: now, expires: now.Add(ttl)}
}

// evictLocked drops expired entries and, if that frees too little, an
// arbitrary tenth of the rest (map order is random enough).
func (c *cache) evictLocked(now time.Time) {
	for k, e := range c.m {
		if !now.Before(e.expires) {
			delete(c.m, k)
		}
	}
	drop := len(c.m) - c.max + c.max/10 + 1
	for k := range c.m {
		if drop <= 0 {
			break
		}
		delete(c.m, k)
		drop--
	}
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// cacheTTL is how long m may be cached.
func cacheTTL(m *dns.Msg) (time.Duration, bool) {
	if m.Truncated {
		return 0, false
	}
	var ttl uint32
	found := false
	min := func(v uint32) {
		if !found || v < ttl {
			ttl, found = v, true
		}
	}
	switch {
	case m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0:
		for _, rr := range m.Answer {
			min(rr.Header().Ttl)
		}
	case m.Rcode == dns.RcodeNameError || m.Rcode == dns.RcodeSuccess:
		for _, rr := range m.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				min(soa.Hdr.Ttl)
				min(soa.Minttl)
			}
		}
	}
	if !found {
		return 0, false
	}
	d := time.Duration(ttl) * time.Second
	return min2(d, maxCacheTTL), true
}

func min2(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}
