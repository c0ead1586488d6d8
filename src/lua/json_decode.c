/* lua/json_decode: strict JSON text -> Lua values, int64 exact. See json_decode.h. */
#include "lua/json_decode.h"

#include <lauxlib.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util/error.h"
#include "util/log.h"
#include "util/utf8.h"

/* The decoder's state; the error text is written once, at the first failure. */
struct jd {
	lua_State *L;
	const char *start, *p, *end;
	int depth, max_depth;
	char err[96];
	bool failed;
};

static unsigned long long lossy;

unsigned long long svc_json_decode_lossy(void)
{
	return lossy;
}

/* Records the first failure at the current position; always false. */
static bool fail(struct jd *d, const char *what)
{
	if (!d->failed)
		snprintf(d->err, sizeof(d->err), "%s at character %zu", what,
		         (size_t)(d->p - d->start) + 1);
	d->failed = true;
	return false;
}

/* A refused number, reported at its first character. */
static bool bad_number(struct jd *d, const char *s, const char *what)
{
	d->p = s;
	return fail(d, what);
}

static void skip_ws(struct jd *d)
{
	while (d->p < d->end && (*d->p == ' ' || *d->p == '\n' || *d->p == '\r' || *d->p == '\t'))
		d->p++;
}

static bool is_digit(const struct jd *d)
{
	return d->p < d->end && *d->p >= '0' && *d->p <= '9';
}

static bool parse_value(struct jd *d);

/* d->p after a backslash-u: appends the code point (a surrogate pair joined) as UTF-8. */
static bool add_unicode(struct jd *d, char **out_p)
{
	long cp, lo;

	if (d->end - d->p < 5 || (cp = svc_utf8_hex4(d->p + 1)) < 0)
		return fail(d, "invalid unicode escape");
	d->p += 5;
	if (cp >= 0xDC00 && cp <= 0xDFFF)
		return fail(d, "invalid unicode escape (lone low surrogate)");
	if (cp >= 0xD800 && cp <= 0xDBFF) {
		if (d->end - d->p < 6 || d->p[0] != '\\' || d->p[1] != 'u' ||
		    (lo = svc_utf8_hex4(d->p + 2)) < 0xDC00 || lo > 0xDFFF)
			return fail(d, "invalid unicode escape (lone high surrogate)");
		d->p += 6;
		cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
	}
	*out_p += svc_utf8_put(*out_p, (unsigned long)cp);
	return true;
}

/* Moves d->p over raw string bytes (no quote, backslash or control character) and checks the
 * run is UTF-8; false on invalid UTF-8. */
static bool scan_raw(struct jd *d)
{
	const unsigned char *s = (const unsigned char *)d->p, *q = s;
	const unsigned char *end = (const unsigned char *)d->end;
	const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
	uint64_t high8 = 0;
	unsigned char high = 0;

	/* Eight bytes at a time while none of them is a quote, a backslash or below 0x20: a byte
	 * b is zero in x exactly when (x - ones) & ~x & highs has its high bit (x = the word, or
	 * the word xor the quote or the backslash repeated; for "below 0x20", x - 0x20 repeated).
	 * A borrow may flag a byte after a real one: the byte loop below then decides. Strings are
	 * mostly plain text, so most of a string goes by in words. */
	while (end - q >= 8) {
		uint64_t v;
		memcpy(&v, q, sizeof(v));
		uint64_t quote = v ^ (ones * '"'), bslash = v ^ (ones * '\\');
		uint64_t stop = ((quote - ones) & ~quote) | ((bslash - ones) & ~bslash) |
		                ((v - ones * 0x20) & ~v);
		if (stop & highs)
			break;
		high8 |= v;
		q += 8;
	}
	if (high8 & highs)
		high = 0x80;
	while (q < end && *q != '"' && *q != '\\' && *q >= 0x20)
		high |= *q++;
	if ((high & 0x80) && !svc_utf8_valid(s, (size_t)(q - s), NULL))
		return fail(d, "invalid UTF-8 in a string");
	d->p = (const char *)q;
	return true;
}

/* Where the string that starts at p ends (its closing quote), skipping escaped characters;
 * end when it has none. Only a size bound: parse_escaped() checks the bytes. */
static const char *string_end(const char *p, const char *end)
{
	while (p < end && *p != '"')
		p += *p == '\\' ? 2 : 1;
	return p < end ? p : end;
}

/* The rest of a string with escapes: run (already scanned) is its start. The text is built in
 * a plain userdata sized from the raw bytes (unescaping never lengthens a string), not in a
 * luaL_Buffer: a failure then leaves no to-be-closed slot for svc_json_decode's lua_settop to
 * close (Lua 5.4.4's lua_settop can use a stale stack pointer after closing one). */
static bool parse_escaped(struct jd *d, const char *run)
{
	static const char plain[] = "\"\\/bfnrt";
	static const char made[] = "\"\\/\b\f\n\r\t";
	size_t bound = (size_t)(string_end(d->p, d->end) - run);
	char *start = lua_newuserdatauv(d->L, bound ? bound : 1, 0), *o = start;

	for (;;) {
		memcpy(o, run, (size_t)(d->p - run));
		o += d->p - run;
		if (d->p >= d->end)
			return fail(d, "unterminated string");
		if (*d->p == '"')
			break;
		if ((unsigned char)*d->p < 0x20)
			return fail(d, "control character in a string");
		/* a backslash */
		if (++d->p >= d->end)
			return fail(d, "unterminated string");
		if (*d->p == 'u') {
			if (!add_unicode(d, &o))
				return false;
		} else {
			const char *e = *d->p ? strchr(plain, *d->p) : NULL;
			if (!e)
				return fail(d, "invalid escape in a string");
			*o++ = made[e - plain];
			d->p++;
		}
		run = d->p;
		if (!scan_raw(d))
			return false;
	}
	d->p++;
	lua_pushlstring(d->L, start, (size_t)(o - start));
	lua_remove(d->L, -2); /* the userdata */
	return true;
}

/* d->p at the opening quote: pushes the string. */
static bool parse_string(struct jd *d)
{
	const char *run = ++d->p;

	if (!scan_raw(d))
		return false;
	if (d->p < d->end && *d->p == '"') { /* no escapes: the common case, no copy */
		lua_pushlstring(d->L, run, (size_t)(d->p - run));
		d->p++;
		return true;
	}
	return parse_escaped(d, run);
}

/* Pushes the float of the number text [s, e) (already checked to be a JSON number). */
static bool push_float(struct jd *d, const char *s, const char *e)
{
	char buf[128];
	size_t n = (size_t)(e - s);
	const char *text = buf;

	if (n < sizeof(buf)) {
		memcpy(buf, s, n);
		buf[n] = '\0';
	} else { /* a long one (400 digits): through a Lua string */
		lua_pushlstring(d->L, s, n);
		text = lua_tostring(d->L, -1);
	}
	/* strtod underneath, with a '.' whatever the locale */
	if (lua_stringtonumber(d->L, text) == 0)
		return bad_number(d, s, "invalid number");
	if (n >= sizeof(buf))
		lua_remove(d->L, -2);
	if (isinf(lua_tonumber(d->L, -1)))
		return bad_number(d, s, "number out of range");
	return true;
}

/* Reads digits into *u; *over is set when they exceed UINT64_MAX. */
static void digits(struct jd *d, uint64_t *u, bool *over)
{
	for (; is_digit(d); d->p++) {
		unsigned v = (unsigned)(*d->p - '0');
		if (*u > (UINT64_MAX - v) / 10)
			*over = true;
		else
			*u = *u * 10 + v;
	}
}

/* d->p at '-' or a digit: pushes an integer or a float per the rules of json_decode.h. */
static bool parse_number(struct jd *d)
{
	const char *s = d->p;
	bool neg = *d->p == '-', over = false, integral = true;
	uint64_t u = 0;

	if (neg)
		d->p++;
	if (!is_digit(d))
		return bad_number(d, s, "invalid number");
	if (*d->p == '0') {
		d->p++;
		if (is_digit(d))
			return bad_number(d, s, "invalid number (leading zero)");
	} else {
		digits(d, &u, &over);
	}
	if (d->p < d->end && *d->p == '.') {
		d->p++;
		if (!is_digit(d))
			return bad_number(d, s, "invalid number (no digit after '.')");
		while (is_digit(d))
			d->p++;
		integral = false;
	}
	if (d->p < d->end && (*d->p == 'e' || *d->p == 'E')) {
		d->p++;
		if (d->p < d->end && (*d->p == '+' || *d->p == '-'))
			d->p++;
		if (!is_digit(d))
			return bad_number(d, s, "invalid number (no digit in the exponent)");
		while (is_digit(d))
			d->p++;
		integral = false;
	}
	if (integral && !over) {
		if (!neg && u <= (uint64_t)INT64_MAX) {
			lua_pushinteger(d->L, (lua_Integer)u);
			return true;
		}
		if (neg && u != 0 && u <= (uint64_t)INT64_MAX + 1) {
			/* -(u - 1) - 1: no signed overflow at -2^63 */
			lua_pushinteger(d->L, -(lua_Integer)(u - 1) - 1);
			return true;
		}
	}
	if (integral && u == 0) { /* "-0": a float, so its sign survives */
		lua_pushnumber(d->L, -0.0);
		return true;
	}
	if (integral) {
		lossy++;
		svc_debug("json", "integer %.*s%s beyond 64 bits decoded as a float (%llu so far)",
		          (int)(d->p - s > 40 ? 40 : d->p - s), s, d->p - s > 40 ? "..." : "",
		          lossy);
	}
	return push_float(d, s, d->p);
}

/* Opens one nesting level; false past max_depth. */
static bool enter(struct jd *d)
{
	char what[64];

	if (++d->depth > d->max_depth) {
		snprintf(what, sizeof(what), "too many nested data structures (%d)", d->depth);
		return fail(d, what);
	}
	d->p++;
	skip_ws(d);
	return true;
}

/* Room on the Lua stack for n more values. */
static bool room(struct jd *d, int n)
{
	return lua_checkstack(d->L, n) || fail(d, "too many values to hold");
}

/* Members and elements wait on the Lua stack, above the position where their table will be,
 * until the container closes or MEMBERS_HELD of them are waiting: the table is then created at
 * its final size (or grown once per MEMBERS_HELD), where setting them one at a time into an
 * empty table rehashes it at every power of two. */
#define MEMBERS_HELD 32

/* Moves the n elements held above the table at `at` (made) or from `at` on (not yet made) into
 * it, numbered from `first`. Leaves the table at `at` and nothing above it. */
static void flush_elements(lua_State *L, int at, bool made, int n, lua_Integer first)
{
	int from = made ? at + 1 : at, t = at;

	if (!made) {
		lua_createtable(L, n, 0);
		t = lua_gettop(L);
	}
	for (int i = 0; i < n; i++) {
		lua_pushvalue(L, from + i);
		lua_rawseti(L, t, first + i);
	}
	if (!made)
		lua_replace(L, at);
	lua_settop(L, at);
}

/* The same for n key/value pairs, set in their order (a repeated key: the last one wins). */
static void flush_members(lua_State *L, int at, bool made, int n)
{
	int from = made ? at + 1 : at, t = at;

	if (!made) {
		lua_createtable(L, 0, n);
		t = lua_gettop(L);
	}
	for (int i = 0; i < n; i++) {
		lua_pushvalue(L, from + 2 * i);
		lua_pushvalue(L, from + 2 * i + 1);
		lua_rawset(L, t);
	}
	if (!made)
		lua_replace(L, at);
	lua_settop(L, at);
}

/* Moves over the ',' between members, or the closing byte `close` (*done). */
static bool next_member(struct jd *d, char close, bool *done)
{
	skip_ws(d);
	if (d->p < d->end && *d->p == ',') {
		d->p++;
		return true;
	}
	if (d->p < d->end && *d->p == close) {
		d->p++;
		d->depth--;
		*done = true;
		return true;
	}
	return fail(d, close == ']' ? "expected ',' or ']'" : "expected ',' or '}'");
}

static bool parse_array(struct jd *d)
{
	bool done = false, made = false;
	int at = lua_gettop(d->L) + 1, n = 0;
	lua_Integer first = 1;

	if (!enter(d))
		return false;
	if (d->p < d->end && *d->p == ']') {
		d->p++;
		d->depth--;
		lua_createtable(d->L, 0, 0);
		return true;
	}
	while (!done) {
		if (!room(d, 4) || !parse_value(d))
			return false;
		if (++n == MEMBERS_HELD) {
			flush_elements(d->L, at, made, n, first);
			made = true;
			first += n;
			n = 0;
		}
		if (!next_member(d, ']', &done))
			return false;
	}
	flush_elements(d->L, at, made, n, first);
	return true;
}

static bool parse_object(struct jd *d)
{
	bool done = false, made = false;
	int at = lua_gettop(d->L) + 1, n = 0;

	if (!enter(d))
		return false;
	if (d->p < d->end && *d->p == '}') {
		d->p++;
		d->depth--;
		lua_createtable(d->L, 0, 0);
		return true;
	}
	while (!done) {
		skip_ws(d);
		if (d->p >= d->end || *d->p != '"')
			return fail(d, "expected an object key string");
		if (!room(d, 6) || !parse_string(d))
			return false;
		skip_ws(d);
		if (d->p >= d->end || *d->p != ':')
			return fail(d, "expected ':'");
		d->p++;
		if (!parse_value(d))
			return false;
		if (++n == MEMBERS_HELD) {
			flush_members(d->L, at, made, n);
			made = true;
			n = 0;
		}
		if (!next_member(d, '}', &done))
			return false;
	}
	flush_members(d->L, at, made, n);
	return true;
}

/* The literal word at d->p, pushed by the caller when it matches. */
static bool word(struct jd *d, const char *w, size_t n)
{
	if ((size_t)(d->end - d->p) < n || memcmp(d->p, w, n) != 0)
		return fail(d, "invalid token");
	d->p += n;
	return true;
}

static bool parse_value(struct jd *d)
{
	skip_ws(d);
	if (d->p >= d->end)
		return fail(d, "expected a value but the text ended");
	switch (*d->p) {
	case '{':
		return parse_object(d);
	case '[':
		return parse_array(d);
	case '"':
		return parse_string(d);
	case 't':
		return word(d, "true", 4) && (lua_pushboolean(d->L, 1), true);
	case 'f':
		return word(d, "false", 5) && (lua_pushboolean(d->L, 0), true);
	case 'n':
		return word(d, "null", 4) && (lua_pushlightuserdata(d->L, NULL), true);
	default:
		if (*d->p == '-' || (*d->p >= '0' && *d->p <= '9'))
			return parse_number(d);
		return fail(d, "expected a value but found an invalid token");
	}
}

int svc_json_decode(lua_State *L, const char *json, size_t len, int max_depth)
{
	struct jd d = {.L = L, .start = json, .p = json, .end = json + len};
	int base = lua_gettop(L);

	d.max_depth = max_depth < 1                    ? 1
	              : max_depth > SVC_JSON_MAX_DEPTH ? SVC_JSON_MAX_DEPTH
	                                               : max_depth;
	if (parse_value(&d)) {
		skip_ws(&d);
		if (d.p == d.end)
			return 0;
		fail(&d, "trailing text after the value");
	}
	lua_settop(L, base);
	lua_pushstring(L, d.err);
	return SVC_EINVAL;
}

/* json_decode(text[, max_depth]) -> value | nil, err */
static int lua_json_decode(lua_State *L)
{
	size_t len;
	const char *text = luaL_checklstring(L, 1, &len);
	lua_Integer depth = luaL_optinteger(L, 2, SVC_JSON_MAX_DEPTH);

	luaL_argcheck(L, depth >= 1 && depth <= SVC_JSON_MAX_DEPTH, 2, "max_depth must be 1..1000");
	lua_settop(L, 1); /* keeps text alive while its bytes are read */
	if (svc_json_decode(L, text, len, (int)depth) == 0)
		return 1;
	lua_pushnil(L);
	lua_insert(L, -2);
	return 2;
}

/* json_lossy() -> how many integer literals beyond int64 were decoded as floats */
static int lua_json_lossy(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)svc_json_decode_lossy());
	return 1;
}

void svc_lua_json_open(lua_State *L)
{
	static const luaL_Reg funcs[] = {
	    {"json_decode", lua_json_decode},
	    {"json_lossy", lua_json_lossy},
	    {NULL, NULL},
	};
	luaL_setfuncs(L, funcs, 0);
}
