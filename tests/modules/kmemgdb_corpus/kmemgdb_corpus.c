// SPDX-License-Identifier: GPL-2.0
/*
 * kmemgdb_corpus: the code kmemcheck must never get wrong, compiled by the real compiler with
 * the kernel's own flags (gcc -O2, no SSE). Where kmemgdb_check pins every access down to one
 * instruction, this module is written the way drivers are: plain C loops, constant-size
 * memcpy/memset and struct copies the compiler inlines as it likes, atomics and bit
 * operations, string helpers, and every allocation helper a driver calls.
 *
 * Each case states its own expectation and prints it with the base address it is relative to:
 *
 *	kmemgdb_corpus: case NAME base 0x... size N expect E done
 *
 * E is "none" or a comma-separated list KIND:ACCESS:OFFSET:SIZE (uninitialized|freed:
 * read|write, bytes from base, bytes of one access), in the order the accesses happen. An
 * expectation depends only on what the C code does, never on the instructions gcc picked: a
 * value copied through a register loses its shadow (kmemcheck has no register shadow), so
 * uninitialized bytes are placed where no copy can pass them on, or copied by code whose
 * instructions are fixed (inline asm, the out-of-line memcpy).
 *
 * Write a case name to /sys/kernel/debug/kmemgdb_corpus to run it, "all" to run every case,
 * "list" to print the names. Loaded with run_all=1 the module runs every case in its init
 * (one init doing everything, as a driver's probe does), then still offers the file.
 */
#include <linux/atomic.h>
#include <linux/bitops.h>
#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/platform_device.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

static bool run_all;
module_param(run_all, bool, 0444);
MODULE_PARM_DESC(run_all, "run every case in the module's init");

/* One case's expectation, built as it runs and printed with its result. */
struct corpus_case {
	const char *name;
	const void *base;
	size_t size;
	char expect[512];
	int len;
	u64 sink;		/* values read, printed so no load is dropped */
};

static void expect(struct corpus_case *c, const char *kind, const char *access, size_t off,
		   size_t size)
{
	c->len += scnprintf(c->expect + c->len, sizeof(c->expect) - c->len, "%s%s:%s:%zu:%zu",
			    c->len ? "," : "", kind, access, off, size);
}

static void uninit_read(struct corpus_case *c, size_t off, size_t size)
{
	expect(c, "uninitialized", "read", off, size);
}

static void set_base(struct corpus_case *c, const void *base, size_t size)
{
	c->base = base;
	c->size = size;
}

/* Where freed pointers are kept, so the compiler cannot see the free before the access. */
static void *volatile corpus_stale;
/* Sizes and counts read through a volatile are not compile-time constants. */
static volatile size_t corpus_runtime_8 = 8, corpus_runtime_64 = 64;

/* One load or store of exactly the given width, at a program counter of its own. */
static noinline __noipa u8 rd8(const void *p) { return READ_ONCE(*(const u8 *)p); }
static noinline __noipa u32 rd32(const void *p) { return READ_ONCE(*(const u32 *)p); }
static noinline __noipa u64 rd64(const void *p) { return READ_ONCE(*(const u64 *)p); }
static noinline __noipa void wr32(void *p, u32 v) { WRITE_ONCE(*(u32 *)p, v); }

/* ---- loops over arrays: the first half written, then all of it summed ---- */

#define CORPUS_LOOP(type)							\
static noinline int case_loop_##type(struct corpus_case *c)			\
{										\
	size_t n = corpus_runtime_8, i;						\
	type *a = kmalloc_array(n, sizeof(*a), GFP_KERNEL);			\
	u64 sum = 0;								\
										\
	if (!a)									\
		return -ENOMEM;							\
	set_base(c, a, n * sizeof(*a));						\
	for (i = 0; i < n / 2; i++)						\
		a[i] = (type)(i * 3 + 1);					\
	for (i = 0; i < n; i++)							\
		sum += a[i];							\
	for (i = n / 2; i < n; i++)						\
		uninit_read(c, i * sizeof(*a), sizeof(*a));			\
	c->sink = sum;								\
	kfree(a);								\
	return 0;								\
}
CORPUS_LOOP(u8)
CORPUS_LOOP(u16)
CORPUS_LOOP(u32)
CORPUS_LOOP(u64)

/* ---- constant-size memcpy and memset, inlined by the compiler ---- */

/*
 * dst comes from kmalloc(N): bytes N..ksize(dst) are never written, so the one read at N is
 * an uninitialized read whatever instructions the copy used; reads inside the copy are not.
 */
#define CORPUS_COPY(n)								\
static noinline int case_memcpy_##n(struct corpus_case *c)			\
{										\
	u8 *src = kmalloc(n, GFP_KERNEL), *dst = kmalloc(n, GFP_KERNEL);	\
										\
	if (!src || !dst)							\
		goto out;							\
	set_base(c, dst, ksize(dst));						\
	memset(src, 0x5a, n);							\
	memcpy(dst, src, n);							\
	c->sink = rd8(dst) + rd8(dst + n - 1);					\
	if (n < ksize(dst)) {							\
		c->sink += rd8(dst + n);					\
		uninit_read(c, n, 1);						\
	}									\
out:										\
	kfree(dst);								\
	kfree(src);								\
	return src && dst ? 0 : -ENOMEM;					\
}										\
static noinline int case_memset_##n(struct corpus_case *c)			\
{										\
	u8 *p = kmalloc(n, GFP_KERNEL);						\
										\
	if (!p)									\
		return -ENOMEM;							\
	set_base(c, p, ksize(p));						\
	memset(p, 0xa5, n);							\
	c->sink = rd8(p) + rd8(p + n - 1);					\
	if (n < ksize(p)) {							\
		c->sink += rd8(p + n);						\
		uninit_read(c, n, 1);						\
	}									\
	kfree(p);								\
	return 0;								\
}

#define CORPUS_SIZES(X)								\
	X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)	\
	X(14) X(15) X(16) X(17) X(23) X(24) X(31) X(32) X(33) X(40) X(48)	\
	X(63) X(64) X(65) X(72) X(96) X(100) X(127) X(128) X(129) X(160)	\
	X(192) X(200) X(255) X(256) X(257) X(384) X(500) X(511) X(512)
CORPUS_SIZES(CORPUS_COPY)

/* ---- struct copies by value ---- */

#define CORPUS_STRUCT(n)							\
struct corpus_blob_##n { u64 head; u8 body[(n) - 16]; u64 tail; };		\
static noinline int case_struct_copy_##n(struct corpus_case *c)		\
{										\
	struct corpus_blob_##n *a = kmalloc(sizeof(*a), GFP_KERNEL);		\
	struct corpus_blob_##n *b = kmalloc(sizeof(*b), GFP_KERNEL);		\
										\
	if (!a || !b)								\
		goto out;							\
	set_base(c, b, ksize(b));						\
	memset(a, 0x11, sizeof(*a));						\
	*b = *a;								\
	c->sink = rd64(&b->head) + rd64(&b->tail) + rd8(&b->body[(n) / 2]);	\
	if (sizeof(*b) < ksize(b)) {						\
		c->sink += rd32((u8 *)b + sizeof(*b));				\
		uninit_read(c, sizeof(*b), 4);					\
	}									\
out:										\
	kfree(b);								\
	kfree(a);								\
	return a && b ? 0 : -ENOMEM;						\
}
CORPUS_STRUCT(24)
CORPUS_STRUCT(40)
CORPUS_STRUCT(72)
CORPUS_STRUCT(136)
CORPUS_STRUCT(264)

/* ---- unaligned and overlapping copies (memmove) of fully written buffers ---- */

static noinline int case_unaligned_copy(struct corpus_case *c)
{
	u8 *src = kmalloc(256, GFP_KERNEL), *dst = kmalloc(256, GFP_KERNEL);
	size_t len = corpus_runtime_64 + 37, i;

	if (!src || !dst)
		goto out;
	set_base(c, dst, 256);
	memset(src, 0x3c, 256);
	for (i = 1; i < 8; i++)
		memcpy(dst + i, src + 8 - i, len);
	c->sink = rd8(dst + 1) + rd8(dst + 7 + len - 1);
	c->sink += rd8(dst + 200);		/* never written */
	uninit_read(c, 200, 1);
out:
	kfree(dst);
	kfree(src);
	return src && dst ? 0 : -ENOMEM;
}

static noinline int case_overlapping_copy(struct corpus_case *c)
{
	u8 *p = kmalloc(512, GFP_KERNEL);
	size_t len = corpus_runtime_64 * 4 + 3;

	if (!p)
		return -ENOMEM;
	set_base(c, p, 512);
	memset(p, 0x77, 300);
	memmove(p + 5, p, len);			/* forward overlap: copied backwards */
	memmove(p + 1, p + 9, len);		/* backward overlap */
	memmove(p + 64, p + 1, 100);
	c->sink = rd64(p) + rd8(p + 1 + len - 1) + rd8(p + 163);
	c->sink += rd8(p + 400);		/* never written */
	uninit_read(c, 400, 1);
	kfree(p);
	return 0;
}

/* ---- bitfields: the compiler loads the byte, merges, stores (bitfield-ok: not a report) ---- */

struct corpus_bits {
	u32 on : 1;
	u32 mode : 3;
	u32 level : 12;
	u32 count;
	u64 rest[3];
};

static noinline int case_bitfields(struct corpus_case *c)
{
	struct corpus_bits *b = kmalloc(sizeof(*b), GFP_KERNEL);

	if (!b)
		return -ENOMEM;
	set_base(c, b, sizeof(*b));
	b->mode = 5;
	b->level = 300;
	b->on = 1;
	c->sink = b->mode + b->level;
	kfree(b);
	return 0;
}

/* ---- atomics and bit operations ---- */

struct corpus_counters {
	atomic_t a;
	atomic_t b;
	atomic64_t c;
	unsigned long bits[2];
	u32 word;
	u32 spare;
};

static noinline int case_atomics(struct corpus_case *c)
{
	struct corpus_counters *p = kzalloc(sizeof(*p), GFP_KERNEL);
	int nr = corpus_runtime_8 + 60;
	long old;

	if (!p)
		return -ENOMEM;
	set_base(c, p, sizeof(*p));
	atomic_inc(&p->a);
	atomic_add(5, &p->a);
	old = atomic_add_return(3, &p->b);			/* lock xadd */
	old += atomic_cmpxchg(&p->a, 6, 9);			/* lock cmpxchg */
	old += atomic64_xchg(&p->c, 0x1234);			/* xchg */
	old += atomic64_fetch_or(0x10, &p->c);			/* cmpxchg loop */
	old += atomic_dec_and_test(&p->b);
	set_bit(3, p->bits);					/* lock orb */
	set_bit(nr, p->bits);					/* lock bts */
	clear_bit(nr, p->bits);
	change_bit(7, p->bits);
	old += test_and_set_bit(nr + 1, p->bits);
	old += test_and_clear_bit(3, p->bits);
	old += test_bit(nr + 1, p->bits);			/* bt */
	old += cmpxchg(&p->word, 0, 42);
	old += xchg(&p->spare, 7);
	c->sink = old + atomic_read(&p->a) + atomic64_read(&p->c) + p->bits[0] + p->bits[1];
	kfree(p);
	return 0;
}

/* Read-modify-write on never-written counters reads uninitialized memory. */
static noinline int case_atomics_uninit(struct corpus_case *c)
{
	struct corpus_counters *p = kmalloc(sizeof(*p), GFP_KERNEL);
	int nr = corpus_runtime_8 + 56;

	if (!p)
		return -ENOMEM;
	set_base(c, p, sizeof(*p));
	atomic_inc(&p->a);
	uninit_read(c, offsetof(struct corpus_counters, a), 4);
	c->sink = atomic_add_return(2, &p->b);
	uninit_read(c, offsetof(struct corpus_counters, b), 4);
	set_bit(nr, p->bits);					/* bit 64: bits[1] */
	uninit_read(c, offsetof(struct corpus_counters, bits) + 8, 8);
	c->sink += cmpxchg(&p->word, 0, 1);
	uninit_read(c, offsetof(struct corpus_counters, word), 4);
	kfree(p);
	return 0;
}

/* ---- string helpers over tracked buffers ---- */

static noinline int case_strings(struct corpus_case *c)
{
	char *a = kmalloc(64, GFP_KERNEL), *b = kmalloc(64, GFP_KERNEL);
	char *hit;

	if (!a || !b)
		goto out;
	set_base(c, b, 64);
	strscpy(a, "kernel memory, checked from the debugger", 64);
	strcpy(b, a);
	c->sink = strlen(b) + strnlen(a, 10) + strcmp(a, b) + memcmp(a, b, 20);
	hit = strchr(b, ',');
	c->sink += hit ? hit - b : 0;
	hit = memchr(a, 'y', strlen(a));
	c->sink += hit ? hit - a : 0;
	strscpy(b + 20, a + 7, 16);
	c->sink += strlen(b) + strncmp(a, b, 10);
	c->sink += rd8(b + 60);					/* never written */
	uninit_read(c, 60, 1);
out:
	kfree(b);
	kfree(a);
	return a && b ? 0 : -ENOMEM;
}

/* ---- string instructions of every width, forward and backward: fixed by inline asm ---- */

/*
 * src has one uninitialized byte at HOLE; the string instruction copies it to dst at HOLE,
 * where it is read: the shadow must travel with the bytes.
 */
#define CORPUS_MOVS(suffix, width)						\
static noinline int case_movs##suffix(struct corpus_case *c)			\
{										\
	u8 *src = kmalloc(128, GFP_KERNEL), *dst = kmalloc(128, GFP_KERNEL);	\
	unsigned long n = 64 / (width), hole = 21;				\
	void *s, *d;								\
										\
	if (!src || !dst)							\
		goto out;							\
	set_base(c, dst, 128);							\
	memset(src, 0x42, hole);						\
	memset(src + hole + 1, 0x42, 127 - hole);				\
	memset(dst + 64, 0x24, 64);						\
	s = src, d = dst;							\
	asm volatile("rep movs" #suffix : "+S"(s), "+D"(d), "+c"(n) : : "memory"); \
	s = src + 64, d = dst + 64;						\
	asm volatile("movs" #suffix : "+S"(s), "+D"(d) : : "memory");		\
	s = src + 64 - (width), d = dst + 64 - (width), n = 64 / (width);	\
	asm volatile("std; rep movs" #suffix "; cld"				\
		     : "+S"(s), "+D"(d), "+c"(n) : : "memory");			\
	c->sink = rd8(dst) + rd8(dst + 70);					\
	c->sink += rd8(dst + hole);						\
	uninit_read(c, hole, 1);						\
out:										\
	kfree(dst);								\
	kfree(src);								\
	return src && dst ? 0 : -ENOMEM;					\
}
CORPUS_MOVS(b, 1)
CORPUS_MOVS(w, 2)
CORPUS_MOVS(l, 4)
CORPUS_MOVS(q, 8)

/* stos fills [0, 64) forward and [64, 96) backward; 96..127 stay uninitialized. */
#define CORPUS_STOS(suffix, width)						\
static noinline int case_stos##suffix(struct corpus_case *c)			\
{										\
	u8 *p = kmalloc(128, GFP_KERNEL);					\
	unsigned long n = 64 / (width), v = 0x0102030405060708UL;		\
	void *d;								\
										\
	if (!p)									\
		return -ENOMEM;							\
	set_base(c, p, 128);							\
	d = p;									\
	asm volatile("rep stos" #suffix : "+D"(d), "+c"(n) : "a"(v) : "memory"); \
	d = p + 64;								\
	asm volatile("stos" #suffix : "+D"(d) : "a"(v) : "memory");		\
	d = p + 96 - (width), n = 32 / (width);					\
	asm volatile("std; rep stos" #suffix "; cld"				\
		     : "+D"(d), "+c"(n) : "a"(v) : "memory");			\
	c->sink = rd64(p) + rd8(p + 95);					\
	c->sink += rd8(p + 100);						\
	uninit_read(c, 100, 1);							\
	kfree(p);								\
	return 0;								\
}
CORPUS_STOS(b, 1)
CORPUS_STOS(w, 2)
CORPUS_STOS(l, 4)
CORPUS_STOS(q, 8)

/* lods, cmps and scas read: over written bytes silently, and one lodsb of the hole. */
static noinline int case_lods_cmps_scas(struct corpus_case *c)
{
	u8 *a = kmalloc(96, GFP_KERNEL), *b = kmalloc(96, GFP_KERNEL);
	unsigned long n, v;
	void *s, *d;

	if (!a || !b)
		goto out;
	set_base(c, a, 96);
	memset(a, 0x61, 64);
	memset(b, 0x61, 64);
	b[40] = 0x62;
	s = a, n = 8;
	asm volatile("rep lodsq" : "+S"(s), "+c"(n), "=a"(v) : : "memory");
	c->sink = v;
	s = a, d = b, n = 64;
	asm volatile("repe cmpsb" : "+S"(s), "+D"(d), "+c"(n) : : "memory", "cc");
	c->sink += n;						/* stops at 40 */
	s = a + 56, d = b + 56, n = 7;
	asm volatile("std; repe cmpsq; cld" : "+S"(s), "+D"(d), "+c"(n) : : "memory", "cc");
	c->sink += n;
	d = b, n = 64;
	asm volatile("repne scasb" : "+D"(d), "+c"(n) : "a"(0x62UL) : "memory", "cc");
	c->sink += n;
	d = a, n = 8;
	asm volatile("repe scasq" : "+D"(d), "+c"(n) : "a"(0x6161616161616161UL)
		     : "memory", "cc");
	c->sink += n;
	s = a + 70;
	asm volatile("lodsb" : "+S"(s), "=a"(v) : : "memory");
	c->sink += v;
	uninit_read(c, 70, 1);
out:
	kfree(b);
	kfree(a);
	return a && b ? 0 : -ENOMEM;
}

/* ---- allocation helpers ---- */

struct corpus_obj {
	u32 id;
	u32 flags;
	u64 cookie;
	u32 len;
	u32 refs;
	u64 data[3];
};							/* 48 bytes */

static struct kmem_cache *corpus_cache, *corpus_ctor_cache;
static struct platform_device *corpus_pdev;

static void corpus_ctor(void *p)
{
	struct corpus_obj *o = p;

	o->id = 0xc0ffee;
	o->refs = 1;
}

static noinline int case_kmalloc(struct corpus_case *c)
{
	struct corpus_obj *o = kmalloc(sizeof(*o), GFP_KERNEL);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	o->id = 1;
	c->sink = rd32(&o->id) + rd32(&o->flags);
	uninit_read(c, offsetof(struct corpus_obj, flags), 4);
	kfree(o);
	return 0;
}

static noinline int case_kzalloc(struct corpus_case *c)
{
	struct corpus_obj *o = kzalloc(sizeof(*o), GFP_KERNEL);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	c->sink = rd32(&o->flags) + rd64(&o->data[2]);
	kfree(o);
	return 0;
}

static noinline int case_kcalloc(struct corpus_case *c)
{
	u64 *a = kcalloc(corpus_runtime_8, sizeof(*a), GFP_KERNEL);

	if (!a)
		return -ENOMEM;
	set_base(c, a, 64);
	c->sink = rd64(&a[0]) + rd64(&a[7]);
	kfree(a);
	return 0;
}

/* The source's first half is written; the copy carries the second half's state. */
static noinline int case_kmemdup(struct corpus_case *c)
{
	u8 *src = kmalloc(64, GFP_KERNEL), *dst = NULL;

	if (!src)
		return -ENOMEM;
	memset(src, 0x99, 32);
	dst = kmemdup(src, 64, GFP_KERNEL);
	if (dst) {
		set_base(c, dst, 64);
		c->sink = rd32(dst + 8) + rd32(dst + 28);
		c->sink += rd32(dst + 40);
		uninit_read(c, 40, 4);
	}
	kfree(dst);
	kfree(src);
	return dst ? 0 : -ENOMEM;
}

static noinline int case_kmemdup_nul(struct corpus_case *c)
{
	char *src = kmalloc(32, GFP_KERNEL), *s = NULL;

	if (!src)
		return -ENOMEM;
	memset(src, 'k', 20);
	s = kmemdup_nul(src, 20, GFP_KERNEL);		/* 21 bytes: kmalloc-32 */
	if (s) {
		set_base(c, s, 32);
		c->sink = strlen(s) + rd8(s + 20);
		c->sink += rd8(s + 24);
		uninit_read(c, 24, 1);
	}
	kfree(s);
	kfree(src);
	return s ? 0 : -ENOMEM;
}

static noinline int case_kstrdup(struct corpus_case *c)
{
	char *src = kmalloc(32, GFP_KERNEL), *s = NULL;

	if (!src)
		return -ENOMEM;
	strscpy(src, "debugger!", 32);			/* 10 bytes with its NUL: kmalloc-16 */
	s = kstrdup(src, GFP_KERNEL);
	if (s) {
		set_base(c, s, 16);
		c->sink = strlen(s) + rd8(s + 9);
		c->sink += rd8(s + 12);
		uninit_read(c, 12, 1);
	}
	kfree(s);
	kfree(src);
	return s ? 0 : -ENOMEM;
}

static noinline int case_kstrndup(struct corpus_case *c)
{
	char *src = kmalloc(32, GFP_KERNEL), *s = NULL;

	if (!src)
		return -ENOMEM;
	strscpy(src, "truncated string", 32);
	s = kstrndup(src, 5, GFP_KERNEL);		/* "trunc" and its NUL: kmalloc-8 */
	if (s) {
		set_base(c, s, 8);
		c->sink = strlen(s) + rd8(s + 5);
		c->sink += rd8(s + 6);
		uninit_read(c, 6, 1);
	}
	kfree(s);
	kfree(src);
	return s ? 0 : -ENOMEM;
}

/* Growing past ksize: a new object, the old contents copied, the new tail uninitialized. */
static noinline int case_krealloc_grow(struct corpus_case *c)
{
	u8 *p = kmalloc(16, GFP_KERNEL), *q;

	if (!p)
		return -ENOMEM;
	memset(p, 0xee, 16);
	q = krealloc(p, 200, GFP_KERNEL);
	if (!q) {
		kfree(p);
		return -ENOMEM;
	}
	set_base(c, q, 256);
	c->sink = rd64(q) + rd64(q + 8);
	c->sink += rd32(q + 100);
	uninit_read(c, 100, 4);
	kfree(q);
	return 0;
}

/* Growing inside ksize: the same object, the bytes past the old size still unwritten. */
static noinline int case_krealloc_inplace(struct corpus_case *c)
{
	u8 *p = kmalloc(20, GFP_KERNEL), *q;

	if (!p)
		return -ENOMEM;
	memset(p, 0xdd, 20);
	q = krealloc(p, 28, GFP_KERNEL);
	if (!q) {
		kfree(p);
		return -ENOMEM;
	}
	set_base(c, q, 32);
	c->sink = rd32(q + 16);
	c->sink += rd32(q + 24);
	uninit_read(c, 24, 4);
	kfree(q);
	return 0;
}

static noinline int case_kvmalloc_small(struct corpus_case *c)
{
	u8 *p = kvmalloc(64, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	set_base(c, p, 64);
	memset(p, 1, 32);
	c->sink = rd32(p + 4) + rd32(p + 48);
	uninit_read(c, 48, 4);
	kvfree(p);
	return 0;
}

static noinline int case_kvmalloc_large(struct corpus_case *c)
{
	u8 *p = kvmalloc(64 << 10, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	set_base(c, p, 64 << 10);
	memset(p, 2, 4096);
	c->sink = rd32(p + 4092) + rd32(p + 40000);
	uninit_read(c, 40000, 4);
	kvfree(p);
	return 0;
}

static noinline int case_kvzalloc(struct corpus_case *c)
{
	u8 *p = kvzalloc(64 << 10, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	set_base(c, p, 64 << 10);
	c->sink = rd32(p + 8) + rd32(p + 50000);
	kvfree(p);
	return 0;
}

static noinline int case_devm_kmalloc(struct corpus_case *c)
{
	struct corpus_obj *o = devm_kmalloc(&corpus_pdev->dev, sizeof(*o), GFP_KERNEL);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	o->id = 2;
	c->sink = rd32(&o->id) + rd32(&o->len);
	uninit_read(c, offsetof(struct corpus_obj, len), 4);
	devm_kfree(&corpus_pdev->dev, o);
	return 0;
}

static noinline int case_devm_kzalloc(struct corpus_case *c)
{
	struct corpus_obj *o = devm_kzalloc(&corpus_pdev->dev, sizeof(*o), GFP_KERNEL);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	c->sink = rd32(&o->len) + rd64(&o->cookie);
	/* freed with the device, as drivers leave it */
	return 0;
}

static noinline int case_cache_alloc(struct corpus_case *c)
{
	struct corpus_obj *o = kmem_cache_alloc(corpus_cache, GFP_KERNEL);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	o->id = 3;
	o->len = 4;
	c->sink = rd32(&o->len) + rd64(&o->cookie);
	uninit_read(c, offsetof(struct corpus_obj, cookie), 8);
	kmem_cache_free(corpus_cache, o);
	return 0;
}

static noinline int case_cache_zalloc(struct corpus_case *c)
{
	struct corpus_obj *o = kmem_cache_zalloc(corpus_cache, GFP_KERNEL);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	c->sink = rd64(&o->cookie) + rd64(&o->data[1]);
	kmem_cache_free(corpus_cache, o);
	return 0;
}

/* The constructor writes id and refs only: the rest is uninitialized, as kmemcheck had it. */
static noinline int case_cache_ctor(struct corpus_case *c)
{
	struct corpus_obj *o = kmem_cache_alloc(corpus_ctor_cache, GFP_KERNEL);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	c->sink = rd32(&o->id) + rd32(&o->refs);
	c->sink += rd32(&o->len);
	uninit_read(c, offsetof(struct corpus_obj, len), 4);
	kmem_cache_free(corpus_ctor_cache, o);
	return 0;
}

/* An 8 KiB object spans two pages: its second page is read unwritten. */
static noinline int case_kmalloc_8k(struct corpus_case *c)
{
	u8 *p = kmalloc(8192, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	set_base(c, p, 8192);
	memset(p, 3, 4096);
	c->sink = rd64(p + 4088) + rd32(p + 4096 + 16);
	uninit_read(c, 4096 + 16, 4);
	kfree(p);
	return 0;
}

/* Past KMALLOC_MAX_CACHE_SIZE: pages straight from the page allocator. */
static noinline int case_kmalloc_large(struct corpus_case *c)
{
	u8 *p = kmalloc(20000, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	set_base(c, p, 20000);
	memset(p, 4, 100);
	c->sink = rd32(p + 96) + rd32(p + 12344);
	uninit_read(c, 12344, 4);
	kfree(p);
	return 0;
}

static noinline int case_vmalloc(struct corpus_case *c)
{
	u8 *p = vmalloc(3 * PAGE_SIZE + 100);

	if (!p)
		return -ENOMEM;
	set_base(c, p, 3 * PAGE_SIZE + 100);
	memset(p, 5, 4096);
	p[3 * PAGE_SIZE + 99] = 1;
	c->sink = rd32(p + 4092) + rd8(p + 3 * PAGE_SIZE + 99) + rd32(p + 5000);
	uninit_read(c, 5000, 4);
	vfree(p);
	return 0;
}

static noinline int case_vzalloc(struct corpus_case *c)
{
	u8 *p = vzalloc(2 * PAGE_SIZE);

	if (!p)
		return -ENOMEM;
	set_base(c, p, 2 * PAGE_SIZE);
	c->sink = rd32(p + 8) + rd64(p + 6000);
	vfree(p);
	return 0;
}

static noinline int case_memset64(struct corpus_case *c)
{
	u64 *p = kmalloc(128, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	set_base(c, p, 128);
	memset64(p, 0x0123456789abcdefULL, 12);		/* rep stosq: [0, 96) */
	c->sink = rd64(&p[0]) + rd64(&p[11]);
	c->sink += rd64(&p[13]);
	uninit_read(c, 13 * 8, 8);
	kfree(p);
	return 0;
}

/* A write and a read after kfree(): both land on freed memory. */
static noinline int case_use_after_free(struct corpus_case *c)
{
	struct corpus_obj *o = kzalloc(sizeof(*o), GFP_KERNEL);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	corpus_stale = o;
	kfree(o);
	/* Deliberately touches the freed object (id: away from SLUB's free pointer). */
	wr32(corpus_stale, 7);
	expect(c, "freed", "write", 0, 4);
	c->sink = rd32(corpus_stale);
	expect(c, "freed", "read", 0, 4);
	corpus_stale = NULL;
	return 0;
}

/* ---- the other entry points: node and lru variants, track_caller, vmalloc family, devm ---- */

/* A fresh object of SIZE bytes from an allocator: one field written, one read unwritten. */
static int uninit_at(struct corpus_case *c, void *p, size_t size, size_t off, bool vmalloced)
{
	if (!p)
		return -ENOMEM;
	set_base(c, p, size);
	memset(p, 9, 8);
	c->sink = rd32(p) + rd32((u8 *)p + off);
	uninit_read(c, off, 4);
	if (vmalloced)
		vfree(p);
	else
		kfree(p);
	return 0;
}

static noinline int case_cache_alloc_node(struct corpus_case *c)
{
	struct corpus_obj *o = kmem_cache_alloc_node(corpus_cache, GFP_KERNEL, NUMA_NO_NODE);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	o->id = 5;
	c->sink = rd32(&o->id) + rd32(&o->refs);
	uninit_read(c, offsetof(struct corpus_obj, refs), 4);
	kmem_cache_free(corpus_cache, o);
	return 0;
}

static noinline int case_cache_alloc_lru(struct corpus_case *c)
{
	struct corpus_obj *o = kmem_cache_alloc_lru(corpus_cache, NULL, GFP_KERNEL);

	if (!o)
		return -ENOMEM;
	set_base(c, o, sizeof(*o));
	o->id = 6;
	c->sink = rd32(&o->id) + rd32(&o->len);
	uninit_read(c, offsetof(struct corpus_obj, len), 4);
	kmem_cache_free(corpus_cache, o);
	return 0;
}

static noinline int case_kmalloc_node(struct corpus_case *c)
{
	return uninit_at(c, kmalloc_node(40, GFP_KERNEL, NUMA_NO_NODE), 40, 32, false);
}

static noinline int case_kmalloc_node_runtime(struct corpus_case *c)
{
	return uninit_at(c, kmalloc_node(corpus_runtime_64, GFP_KERNEL, NUMA_NO_NODE), 64, 56, false);
}

static noinline int case_kmalloc_large_node(struct corpus_case *c)
{
	return uninit_at(c, kmalloc_node(20000, GFP_KERNEL, NUMA_NO_NODE), 20000, 16000, false);
}

static noinline int case_kmalloc_track_caller(struct corpus_case *c)
{
	return uninit_at(c, kmalloc_track_caller(corpus_runtime_64, GFP_KERNEL), 64, 12, false);
}

static noinline int case_vmalloc_node(struct corpus_case *c)
{
	return uninit_at(c, vmalloc_node(2 * PAGE_SIZE, NUMA_NO_NODE), 2 * PAGE_SIZE, 7000, true);
}

static noinline int case_vmalloc_32(struct corpus_case *c)
{
	return uninit_at(c, vmalloc_32(PAGE_SIZE), PAGE_SIZE, 100, true);
}

static noinline int case_vmalloc_array(struct corpus_case *c)
{
	return uninit_at(c, vmalloc_array(corpus_runtime_8, 1024), 8192, 5000, true);
}

static noinline int case_vmalloc_array_gfp(struct corpus_case *c)
{
	return uninit_at(c, __vmalloc_array(corpus_runtime_8, 512, GFP_KERNEL), 4096, 3000, true);
}

/* The zeroing vmalloc variants: nothing unwritten to read. */
static int zeroed_area(struct corpus_case *c, u8 *p, size_t size)
{
	if (!p)
		return -ENOMEM;
	set_base(c, p, size);
	c->sink = rd32(p) + rd64(p + size - 8);
	vfree(p);
	return 0;
}

static noinline int case_vzalloc_node(struct corpus_case *c)
{
	return zeroed_area(c, vzalloc_node(PAGE_SIZE, NUMA_NO_NODE), PAGE_SIZE);
}

static noinline int case___vmalloc_zero(struct corpus_case *c)
{
	return zeroed_area(c, __vmalloc(3 * PAGE_SIZE, GFP_KERNEL | __GFP_ZERO), 3 * PAGE_SIZE);
}

static noinline int case_vmalloc_user(struct corpus_case *c)
{
	return zeroed_area(c, vmalloc_user(PAGE_SIZE), PAGE_SIZE);
}

static noinline int case_vcalloc(struct corpus_case *c)
{
	return zeroed_area(c, vcalloc(corpus_runtime_8, 512), 4096);
}

/* A heap string is copied; a .rodata one is returned as it is (nothing allocated). */
static noinline int case_kstrdup_const(struct corpus_case *c)
{
	char *src = kmalloc(32, GFP_KERNEL);
	const char *s, *lit;

	if (!src)
		return -ENOMEM;
	strscpy(src, "constant?", 32);			/* 10 bytes: kmalloc-16 */
	s = kstrdup_const(src, GFP_KERNEL);
	lit = kstrdup_const("in .rodata", GFP_KERNEL);
	if (s && lit) {
		set_base(c, s, 16);
		c->sink = strlen(s) + strlen(lit) + rd8(s + 9);
		c->sink += rd8(s + 14);
		uninit_read(c, 14, 1);
	}
	kfree_const(lit);
	kfree_const(s);
	kfree(src);
	return s && lit ? 0 : -ENOMEM;
}

static noinline int case_devm_kmemdup(struct corpus_case *c)
{
	u8 *src = kmalloc(64, GFP_KERNEL), *dst = NULL;

	if (!src)
		return -ENOMEM;
	memset(src, 0x98, 32);
	dst = devm_kmemdup(&corpus_pdev->dev, src, 64, GFP_KERNEL);
	if (dst) {
		set_base(c, dst, 64);
		c->sink = rd32(dst + 4) + rd32(dst + 44);
		uninit_read(c, 44, 4);
		devm_kfree(&corpus_pdev->dev, dst);
	}
	kfree(src);
	return dst ? 0 : -ENOMEM;
}

/* The copy follows a devres header the module cannot see: only the string is read. */
static noinline int case_devm_kstrdup(struct corpus_case *c)
{
	char *src = kmalloc(32, GFP_KERNEL), *s = NULL;

	if (!src)
		return -ENOMEM;
	strscpy(src, "managed", 32);
	s = devm_kstrdup(&corpus_pdev->dev, src, GFP_KERNEL);
	if (s) {
		set_base(c, s, 8);
		c->sink = strlen(s) + rd8(s + 7) + rd64(s);
		devm_kfree(&corpus_pdev->dev, s);
	}
	kfree(src);
	return s ? 0 : -ENOMEM;
}

#define CORPUS_ENTRY(name) { #name, case_##name },
#define CORPUS_SIZE_ENTRIES(n) { "memcpy_" #n, case_memcpy_##n }, { "memset_" #n, case_memset_##n },

static const struct {
	const char *name;
	int (*run)(struct corpus_case *c);
} corpus_cases[] = {
	CORPUS_ENTRY(loop_u8) CORPUS_ENTRY(loop_u16) CORPUS_ENTRY(loop_u32) CORPUS_ENTRY(loop_u64)
	CORPUS_SIZES(CORPUS_SIZE_ENTRIES)
	CORPUS_ENTRY(struct_copy_24) CORPUS_ENTRY(struct_copy_40) CORPUS_ENTRY(struct_copy_72)
	CORPUS_ENTRY(struct_copy_136) CORPUS_ENTRY(struct_copy_264)
	CORPUS_ENTRY(unaligned_copy) CORPUS_ENTRY(overlapping_copy)
	CORPUS_ENTRY(bitfields) CORPUS_ENTRY(atomics) CORPUS_ENTRY(atomics_uninit)
	CORPUS_ENTRY(strings)
	CORPUS_ENTRY(movsb) CORPUS_ENTRY(movsw) CORPUS_ENTRY(movsl) CORPUS_ENTRY(movsq)
	CORPUS_ENTRY(stosb) CORPUS_ENTRY(stosw) CORPUS_ENTRY(stosl) CORPUS_ENTRY(stosq)
	CORPUS_ENTRY(lods_cmps_scas)
	CORPUS_ENTRY(kmalloc) CORPUS_ENTRY(kzalloc) CORPUS_ENTRY(kcalloc)
	CORPUS_ENTRY(kmemdup) CORPUS_ENTRY(kmemdup_nul) CORPUS_ENTRY(kstrdup)
	CORPUS_ENTRY(kstrndup) CORPUS_ENTRY(krealloc_grow) CORPUS_ENTRY(krealloc_inplace)
	CORPUS_ENTRY(kvmalloc_small) CORPUS_ENTRY(kvmalloc_large) CORPUS_ENTRY(kvzalloc)
	CORPUS_ENTRY(devm_kmalloc) CORPUS_ENTRY(devm_kzalloc)
	CORPUS_ENTRY(cache_alloc) CORPUS_ENTRY(cache_zalloc) CORPUS_ENTRY(cache_ctor)
	CORPUS_ENTRY(kmalloc_8k) CORPUS_ENTRY(kmalloc_large) CORPUS_ENTRY(vmalloc)
	CORPUS_ENTRY(vzalloc) CORPUS_ENTRY(memset64) CORPUS_ENTRY(use_after_free)
	CORPUS_ENTRY(cache_alloc_node) CORPUS_ENTRY(cache_alloc_lru) CORPUS_ENTRY(kmalloc_node)
	CORPUS_ENTRY(kmalloc_node_runtime) CORPUS_ENTRY(kmalloc_large_node)
	CORPUS_ENTRY(kmalloc_track_caller) CORPUS_ENTRY(vmalloc_node) CORPUS_ENTRY(vmalloc_32)
	CORPUS_ENTRY(vmalloc_array) CORPUS_ENTRY(vmalloc_array_gfp) CORPUS_ENTRY(vzalloc_node)
	CORPUS_ENTRY(__vmalloc_zero) CORPUS_ENTRY(vmalloc_user) CORPUS_ENTRY(vcalloc)
	CORPUS_ENTRY(kstrdup_const) CORPUS_ENTRY(devm_kmemdup) CORPUS_ENTRY(devm_kstrdup)
};

/*
 * The bookkeeping lives in the module's .bss, away from the heap under test (a kmalloc'd one
 * would be tracked too, and every character of an expectation would be a checked write).
 */
static struct corpus_case corpus_current;
static DEFINE_MUTEX(corpus_lock);

static int corpus_run(size_t i)
{
	struct corpus_case *c = &corpus_current;
	int err;

	mutex_lock(&corpus_lock);
	memset(c, 0, sizeof(*c));
	c->name = corpus_cases[i].name;
	err = corpus_cases[i].run(c);
	if (!err)
		pr_info("kmemgdb_corpus: case %s base %px size %zu expect %s sink %#llx done\n",
			c->name, c->base, c->size, c->len ? c->expect : "none", c->sink);
	mutex_unlock(&corpus_lock);
	return err;
}

static int corpus_run_all(void)
{
	size_t i;
	int err;

	for (i = 0; i < ARRAY_SIZE(corpus_cases); i++) {
		err = corpus_run(i);
		if (err)
			return err;
	}
	pr_info("kmemgdb_corpus: all %zu cases done\n", ARRAY_SIZE(corpus_cases));
	return 0;
}

static ssize_t corpus_write(struct file *file, const char __user *ubuf, size_t len,
			    loff_t *ppos)
{
	char buf[32], *word;
	size_t i;
	int err;

	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = '\0';
	word = strim(buf);
	if (!strcmp(word, "all")) {
		err = corpus_run_all();
		return err ? err : len;
	}
	if (!strcmp(word, "list")) {
		for (i = 0; i < ARRAY_SIZE(corpus_cases); i++)
			pr_info("kmemgdb_corpus: has %s\n", corpus_cases[i].name);
		return len;
	}
	for (i = 0; i < ARRAY_SIZE(corpus_cases); i++) {
		if (!strcmp(word, corpus_cases[i].name)) {
			err = corpus_run(i);
			return err ? err : len;
		}
	}
	return -EINVAL;
}

static const struct file_operations corpus_fops = {
	.owner = THIS_MODULE,
	.write = corpus_write,
};

static struct dentry *corpus_file;

static void corpus_teardown(void)
{
	debugfs_remove(corpus_file);
	if (corpus_pdev)
		platform_device_unregister(corpus_pdev);
	kmem_cache_destroy(corpus_ctor_cache);
	kmem_cache_destroy(corpus_cache);
}

static int __init corpus_init(void)
{
	int err;

	/* A plain 48-byte cache: SLUB may merge it with another (the report names both). */
	corpus_cache = kmem_cache_create("kmemgdb_corpus_obj", sizeof(struct corpus_obj), 0, 0,
					 NULL);
	corpus_ctor_cache = kmem_cache_create("kmemgdb_corpus_ctor", sizeof(struct corpus_obj), 0,
					      0, corpus_ctor);
	corpus_pdev = platform_device_register_simple("kmemgdb_corpus", -1, NULL, 0);
	if (!corpus_cache || !corpus_ctor_cache || IS_ERR(corpus_pdev)) {
		err = IS_ERR(corpus_pdev) ? PTR_ERR(corpus_pdev) : -ENOMEM;
		if (IS_ERR(corpus_pdev))
			corpus_pdev = NULL;
		goto fail;
	}
	corpus_file = debugfs_create_file("kmemgdb_corpus", 0200, NULL, NULL, &corpus_fops);
	if (run_all) {
		err = corpus_run_all();
		if (err)
			goto fail;
	}
	pr_info("kmemgdb_corpus: loaded, %zu cases\n", ARRAY_SIZE(corpus_cases));
	return 0;
fail:
	corpus_teardown();
	return err;
}

static void __exit corpus_exit(void)
{
	corpus_teardown();
}

module_init(corpus_init);
module_exit(corpus_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmemgdb kmemcheck corpus: driver-style code compiled with the kernel's flags");
