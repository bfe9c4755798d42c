// SPDX-License-Identifier: GPL-2.0
/*
 * The acceptance module for kmemgdb's host-side kmemcheck (uninitialized-read detector).
 *
 * Writing one command to /sys/kernel/debug/kmemgdb_check runs one case: a single, precise
 * kind of access to objects of this module's own caches (or of kmalloc-32), at known
 * offsets and with known access sizes. Every case ends with one line in the kernel log,
 *
 *	kmemgdb_check: CASE obj 0x... <values read> done
 *
 * so a test can check that the guest really ran it and match the checker's reports to the
 * object address (%px). The values written are fixed (KMEMGDB_CHECK_*), so the values read
 * back are known too whenever they come from initialized memory.
 *
 *	uninit8 uninit16 uninit32 uninit64
 *		kmem_cache_alloc from "kmemgdb_check", read flag8 / val16 / val32 / val64
 *		(1/2/4/8-byte load at offset 0/2/4/8) with nothing written: uninitialized reads
 *	zeroed	kmem_cache_zalloc, read every named field: all initialized
 *	memset	kmem_cache_alloc + memset(0) of the whole object, read every named field
 *	partial	write every named field but timeout, read flag8, val16, val32, val64 (initialized),
 *		then timeout (4-byte load at offset 16, the only uninitialized read)
 *	memcpy	src and dst from "kmemgdb_check"; src written but for timeout; a real call to
 *		memcpy(dst, src, 32); read dst->val64 (initialized) and dst->timeout
 *		(uninitialized: copied from src's uninitialized timeout)
 *	padding	every named field written, the padding at 20..23 never; the whole struct
 *		copied to the stack by memcpy in kmemgdb_check_copy_out(), padding included
 *		(only named fields are used afterwards)
 *	uaf	all fields written, object freed, then val32 (offset 4) read: use after free
 *	notrack	as uninit32 but from "kmemgdb_check_notrack" (a cache the checker is not told of)
 *	loop N	one object, memset + every field written, then val64 read N times (one 8-byte
 *		load per iteration in kmemgdb_check_read_loop()): a throughput benchmark
 *	kmalloc32
 *		kmalloc(32) (kmalloc-32, not a module cache), read val32 uninitialized
 *	kzalloc	kzalloc(32), read val32 (initialized)
 *	bitfield
 *		a struct check_bits (same size) from "kmemgdb_check"; set the 3-bit field mode:
 *		the compiler loads the byte holding it (other bits uninitialized), merges and
 *		stores it back: the read the kernel's kmemcheck_annotate_bitfield() existed for
 *
 * Unknown commands, a number after a command other than loop, or loop without one: -EINVAL.
 *
 * Every load and store of a field goes through a noinline __noipa function (neither inlined
 * nor cloned, nor specialized for its arguments) using READ_ONCE/WRITE_ONCE: each is one
 * instruction of the field's size, at a program counter that kmem symbolize names.
 */
#include <linux/build_bug.h>
#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/stddef.h>
#include <linux/string.h>
#include <linux/uaccess.h>

struct check_req {
	u8  flag8;	/* offset 0 */
	u8  small8;	/* 1 */
	u16 val16;	/* 2 */
	u32 val32;	/* 4 */
	u64 val64;	/* 8 */
	u32 timeout;	/* 16 */
	/* 4 bytes of padding at 20..23 */
	u64 tail;	/* 24 */
};			/* size 32 */

/* What the writers store, so the values read back from initialized memory are known. */
#define KMEMGDB_CHECK_FLAG8	0x11
#define KMEMGDB_CHECK_SMALL8	0x22
#define KMEMGDB_CHECK_VAL16	0x3344
#define KMEMGDB_CHECK_VAL32	0x55667788U
#define KMEMGDB_CHECK_VAL64	0x99aabbccddeeff00ULL
#define KMEMGDB_CHECK_TIMEOUT	0x0badcafeU
#define KMEMGDB_CHECK_TAIL	0x0fedcba987654321ULL

static struct kmem_cache *kmemgdb_check_cache, *kmemgdb_check_notrack_cache;
static struct dentry *kmemgdb_check_file;

/* Where uaf keeps its pointer across the free, so the compiler cannot see the free. */
static struct check_req *volatile kmemgdb_check_stale;

/* The readers: each is exactly one load of the field's size. */
static noinline __noipa u8 kmemgdb_check_read_flag8(const struct check_req *p)
{
	return READ_ONCE(p->flag8);
}

static noinline __noipa u8 kmemgdb_check_read_small8(const struct check_req *p)
{
	return READ_ONCE(p->small8);
}

static noinline __noipa u16 kmemgdb_check_read_val16(const struct check_req *p)
{
	return READ_ONCE(p->val16);
}

static noinline __noipa u32 kmemgdb_check_read_val32(const struct check_req *p)
{
	return READ_ONCE(p->val32);
}

static noinline __noipa u64 kmemgdb_check_read_val64(const struct check_req *p)
{
	return READ_ONCE(p->val64);
}

static noinline __noipa u32 kmemgdb_check_read_timeout(const struct check_req *p)
{
	return READ_ONCE(p->timeout);
}

static noinline __noipa u64 kmemgdb_check_read_tail(const struct check_req *p)
{
	return READ_ONCE(p->tail);
}

/* loop: one 8-byte load of val64 per iteration (volatile loads are neither merged nor hoisted). */
static noinline __noipa u64 kmemgdb_check_read_loop(const struct check_req *p,
						     unsigned int n)
{
	u64 sum = 0;
	unsigned int i;

	for (i = 0; i < n; i++)
		sum += READ_ONCE(p->val64);
	return sum;
}

/* The writers: one store per named field, of the field's size; the padding is never written. */
static noinline __noipa void kmemgdb_check_fill(struct check_req *p, bool with_timeout)
{
	WRITE_ONCE(p->flag8, KMEMGDB_CHECK_FLAG8);
	WRITE_ONCE(p->small8, KMEMGDB_CHECK_SMALL8);
	WRITE_ONCE(p->val16, KMEMGDB_CHECK_VAL16);
	WRITE_ONCE(p->val32, KMEMGDB_CHECK_VAL32);
	WRITE_ONCE(p->val64, KMEMGDB_CHECK_VAL64);
	if (with_timeout)
		WRITE_ONCE(p->timeout, KMEMGDB_CHECK_TIMEOUT);
	WRITE_ONCE(p->tail, KMEMGDB_CHECK_TAIL);
}

/* The size is known here, so the compiler stores the zeroes itself (no call to memset). */
static noinline __noipa void kmemgdb_check_memset(struct check_req *p)
{
	memset(p, 0, sizeof(*p));
}

/*
 * n is not known at compile time (__noipa, and the caller passes it through a volatile), so
 * this stays a real call to memcpy; the barrier after it keeps it a call, not a tail jump, so
 * backtraces from inside memcpy show this function.
 */
static noinline __noipa void kmemgdb_check_memcpy(void *dst, const void *src, size_t n)
{
	memcpy(dst, src, n);
	barrier();
}

/*
 * The whole struct, padding included, copied out of the object by memcpy, as copy_to_user()
 * copies a struct out of the kernel (the siginfo case of Documentation/kmemcheck.txt).
 */
static noinline __noipa void kmemgdb_check_copy_out(struct check_req *out,
						    const struct check_req *p)
{
	kmemgdb_check_memcpy(out, p, sizeof(*p));
}

/* Reads every named field once, each through its one-load reader. */
static u64 kmemgdb_check_read_all(const struct check_req *p)
{
	return kmemgdb_check_read_flag8(p) + kmemgdb_check_read_small8(p) +
	       kmemgdb_check_read_val16(p) + kmemgdb_check_read_val32(p) +
	       kmemgdb_check_read_val64(p) + kmemgdb_check_read_timeout(p) +
	       kmemgdb_check_read_tail(p);
}

/* uninit8/16/32/64 and notrack: one uninitialized read of SIZE bytes of a fresh object. */
static int kmemgdb_check_uninit(const char *name, struct kmem_cache *cache, unsigned int size)
{
	struct check_req *p = kmem_cache_alloc(cache, GFP_KERNEL);
	u64 v;

	if (!p)
		return -ENOMEM;
	switch (size) {
	case 1:
		v = kmemgdb_check_read_flag8(p);
		break;
	case 2:
		v = kmemgdb_check_read_val16(p);
		break;
	case 4:
		v = kmemgdb_check_read_val32(p);
		break;
	default:
		v = kmemgdb_check_read_val64(p);
		break;
	}
	pr_info("kmemgdb_check: %s obj %px value %#llx done\n", name, p, v);
	kmem_cache_free(cache, p);
	return 0;
}

static int kmemgdb_check_case_uninit8(unsigned int n)
{
	return kmemgdb_check_uninit("uninit8", kmemgdb_check_cache, 1);
}

static int kmemgdb_check_case_uninit16(unsigned int n)
{
	return kmemgdb_check_uninit("uninit16", kmemgdb_check_cache, 2);
}

static int kmemgdb_check_case_uninit32(unsigned int n)
{
	return kmemgdb_check_uninit("uninit32", kmemgdb_check_cache, 4);
}

static int kmemgdb_check_case_uninit64(unsigned int n)
{
	return kmemgdb_check_uninit("uninit64", kmemgdb_check_cache, 8);
}

static int kmemgdb_check_case_notrack(unsigned int n)
{
	return kmemgdb_check_uninit("notrack", kmemgdb_check_notrack_cache, 4);
}

static int kmemgdb_check_case_zeroed(unsigned int n)
{
	struct check_req *p = kmem_cache_zalloc(kmemgdb_check_cache, GFP_KERNEL);
	u64 sum;

	if (!p)
		return -ENOMEM;
	sum = kmemgdb_check_read_all(p);
	pr_info("kmemgdb_check: zeroed obj %px sum %#llx done\n", p, sum);
	kmem_cache_free(kmemgdb_check_cache, p);
	return 0;
}

static int kmemgdb_check_case_memset(unsigned int n)
{
	struct check_req *p = kmem_cache_alloc(kmemgdb_check_cache, GFP_KERNEL);
	u64 sum;

	if (!p)
		return -ENOMEM;
	kmemgdb_check_memset(p);
	sum = kmemgdb_check_read_all(p);
	pr_info("kmemgdb_check: memset obj %px sum %#llx done\n", p, sum);
	kmem_cache_free(kmemgdb_check_cache, p);
	return 0;
}

static int kmemgdb_check_case_partial(unsigned int n)
{
	struct check_req *p = kmem_cache_alloc(kmemgdb_check_cache, GFP_KERNEL);
	u64 sum;
	u32 timeout;

	if (!p)
		return -ENOMEM;
	kmemgdb_check_fill(p, false);
	sum = kmemgdb_check_read_flag8(p) + kmemgdb_check_read_val16(p) +
	      kmemgdb_check_read_val32(p) + kmemgdb_check_read_val64(p);
	timeout = kmemgdb_check_read_timeout(p);
	pr_info("kmemgdb_check: partial obj %px sum %#llx timeout %#x done\n", p, sum, timeout);
	kmem_cache_free(kmemgdb_check_cache, p);
	return 0;
}

static int kmemgdb_check_case_memcpy(unsigned int n)
{
	struct check_req *src, *dst;
	volatile size_t size = sizeof(*src);
	u64 val64;
	u32 timeout;

	src = kmem_cache_alloc(kmemgdb_check_cache, GFP_KERNEL);
	if (!src)
		return -ENOMEM;
	dst = kmem_cache_alloc(kmemgdb_check_cache, GFP_KERNEL);
	if (!dst) {
		kmem_cache_free(kmemgdb_check_cache, src);
		return -ENOMEM;
	}
	kmemgdb_check_fill(src, false);
	kmemgdb_check_memcpy(dst, src, size);
	val64 = kmemgdb_check_read_val64(dst);
	timeout = kmemgdb_check_read_timeout(dst);
	pr_info("kmemgdb_check: memcpy src %px dst %px val64 %#llx timeout %#x done\n",
		src, dst, val64, timeout);
	kmem_cache_free(kmemgdb_check_cache, dst);
	kmem_cache_free(kmemgdb_check_cache, src);
	return 0;
}

static int kmemgdb_check_case_padding(unsigned int n)
{
	struct check_req *p = kmem_cache_alloc(kmemgdb_check_cache, GFP_KERNEL);
	struct check_req copy;
	u64 sum;

	if (!p)
		return -ENOMEM;
	kmemgdb_check_fill(p, true);
	kmemgdb_check_copy_out(&copy, p);
	sum = copy.flag8 + copy.small8 + copy.val16 + copy.val32 + copy.val64 + copy.timeout +
	      copy.tail;
	pr_info("kmemgdb_check: padding obj %px sum %#llx done\n", p, sum);
	kmem_cache_free(kmemgdb_check_cache, p);
	return 0;
}

static int kmemgdb_check_case_uaf(unsigned int n)
{
	struct check_req *p = kmem_cache_alloc(kmemgdb_check_cache, GFP_KERNEL);
	u32 v;

	if (!p)
		return -ENOMEM;
	kmemgdb_check_fill(p, true);
	kmemgdb_check_stale = p;
	kmem_cache_free(kmemgdb_check_cache, p);
	/* Deliberately reads the freed object. */
	v = kmemgdb_check_read_val32(kmemgdb_check_stale);
	kmemgdb_check_stale = NULL;
	pr_info("kmemgdb_check: uaf obj %px value %#x done\n", p, v);
	return 0;
}

static int kmemgdb_check_case_loop(unsigned int n)
{
	struct check_req *p = kmem_cache_alloc(kmemgdb_check_cache, GFP_KERNEL);
	u64 sum;

	if (!p)
		return -ENOMEM;
	kmemgdb_check_memset(p);
	kmemgdb_check_fill(p, true);
	sum = kmemgdb_check_read_loop(p, n);
	pr_info("kmemgdb_check: loop obj %px n %u sum %#llx done\n", p, n, sum);
	kmem_cache_free(kmemgdb_check_cache, p);
	return 0;
}

static int kmemgdb_check_case_kmalloc32(unsigned int n)
{
	struct check_req *p = kmalloc(sizeof(*p), GFP_KERNEL);
	u32 v;

	if (!p)
		return -ENOMEM;
	v = kmemgdb_check_read_val32(p);
	pr_info("kmemgdb_check: kmalloc32 obj %px value %#x done\n", p, v);
	kfree(p);
	return 0;
}

static int kmemgdb_check_case_kzalloc(unsigned int n)
{
	struct check_req *p = kzalloc(sizeof(*p), GFP_KERNEL);
	u32 v;

	if (!p)
		return -ENOMEM;
	v = kmemgdb_check_read_val32(p);
	pr_info("kmemgdb_check: kzalloc obj %px value %#x done\n", p, v);
	kfree(p);
	return 0;
}

/* Bitfields sharing one byte of storage, then the rest of a 32-byte object. */
struct check_bits {
	u8 enabled : 1;
	u8 mode : 3;
	u8 level : 4;
	u8 rest[31];
};

static noinline __noipa void kmemgdb_check_set_mode(struct check_bits *b, unsigned int mode)
{
	b->mode = mode;
}

static int kmemgdb_check_case_bitfield(unsigned int n)
{
	struct check_bits *b;

	BUILD_BUG_ON(sizeof(struct check_bits) != sizeof(struct check_req));
	b = kmem_cache_alloc(kmemgdb_check_cache, GFP_KERNEL);
	if (!b)
		return -ENOMEM;
	kmemgdb_check_set_mode(b, 5);
	pr_info("kmemgdb_check: bitfield obj %px mode %u done\n", b, b->mode);
	kmem_cache_free(kmemgdb_check_cache, b);
	return 0;
}

static const struct {
	const char *name;
	int (*run)(unsigned int n);
	bool takes_n;
} kmemgdb_check_cases[] = {
	{ "uninit8", kmemgdb_check_case_uninit8 },
	{ "uninit16", kmemgdb_check_case_uninit16 },
	{ "uninit32", kmemgdb_check_case_uninit32 },
	{ "uninit64", kmemgdb_check_case_uninit64 },
	{ "zeroed", kmemgdb_check_case_zeroed },
	{ "memset", kmemgdb_check_case_memset },
	{ "partial", kmemgdb_check_case_partial },
	{ "memcpy", kmemgdb_check_case_memcpy },
	{ "padding", kmemgdb_check_case_padding },
	{ "uaf", kmemgdb_check_case_uaf },
	{ "notrack", kmemgdb_check_case_notrack },
	{ "loop", kmemgdb_check_case_loop, true },
	{ "kmalloc32", kmemgdb_check_case_kmalloc32 },
	{ "kzalloc", kmemgdb_check_case_kzalloc },
	{ "bitfield", kmemgdb_check_case_bitfield },
};

static ssize_t kmemgdb_check_write(struct file *file, const char __user *ubuf, size_t len,
				   loff_t *ppos)
{
	char buf[32], *rest, *word;
	unsigned int n = 0;
	bool has_n = false;
	size_t i;
	int err;

	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = '\0';
	rest = strim(buf);
	word = strsep(&rest, " \t");
	if (rest) {
		if (kstrtouint(skip_spaces(rest), 0, &n))
			return -EINVAL;
		has_n = true;
	}
	for (i = 0; i < ARRAY_SIZE(kmemgdb_check_cases); i++) {
		if (strcmp(word, kmemgdb_check_cases[i].name))
			continue;
		if (has_n != kmemgdb_check_cases[i].takes_n)
			return -EINVAL;
		err = kmemgdb_check_cases[i].run(n);
		return err ? err : len;
	}
	return -EINVAL;
}

static const struct file_operations kmemgdb_check_fops = {
	.owner = THIS_MODULE,
	.write = kmemgdb_check_write,
};

/*
 * Our own caches must not be merged (aliased) with another cache of the same size: not with
 * each other (the checker tracks one and not the other), nor with any 32-byte cache of the
 * kernel (the checker would watch foreign objects, and the name would be only an alias). 6.1
 * has no SLAB_NO_MERGE, and slab_nomerge is a boot argument. What keeps a cache from merging
 * (mm/slab_common.c: slab_unmergeable(), find_mergeable(), kmem_cache_create_usercopy()) is
 * a flag in SLAB_NEVER_MERGE, a constructor, or a non-zero usersize. The flags all cost
 * something:
 *   SLAB_RED_ZONE, SLAB_POISON, SLAB_STORE_USER  change the object layout (and debug checks);
 *   SLAB_TYPESAFE_BY_RCU  changes free semantics and moves the free pointer out of the object;
 *   SLAB_TRACE  is a SLUB debug flag: every alloc/free takes the slow debug path and logs;
 *   SLAB_FAILSLAB  is 0 unless CONFIG_FAILSLAB (this guest has it off);
 *   SLAB_NOLEAKTRACE  hides the cache from kmemleak, including kmemgdb's own host-side heap
 *		walk (gdbext/core/heap/slub.py skips such caches), which the checkers build on.
 * A constructor moves the free pointer out of the object and makes SLUB call it on every new
 * slab. A usercopy region costs nothing here: it only feeds CONFIG_HARDENED_USERCOPY's
 * copy_{to,from}_user whitelist (off in this guest; and the whole object is whitelisted
 * anyway), and leaves flags, layout (free pointer at offset 16, as for any plain 32-byte
 * cache) and free semantics untouched. So: kmem_cache_create_usercopy() with flags 0 and the
 * whole object as the usercopy region. /sys/kernel/slab/kmemgdb_check is then a directory,
 * not a symlink to a merged cache.
 */
static struct kmem_cache *kmemgdb_check_create(const char *name)
{
	return kmem_cache_create_usercopy(name, sizeof(struct check_req), 0, 0, 0,
					  sizeof(struct check_req), NULL);
}

static int __init kmemgdb_check_init(void)
{
	BUILD_BUG_ON(offsetof(struct check_req, flag8) != 0);
	BUILD_BUG_ON(offsetof(struct check_req, small8) != 1);
	BUILD_BUG_ON(offsetof(struct check_req, val16) != 2);
	BUILD_BUG_ON(offsetof(struct check_req, val32) != 4);
	BUILD_BUG_ON(offsetof(struct check_req, val64) != 8);
	BUILD_BUG_ON(offsetof(struct check_req, timeout) != 16);
	BUILD_BUG_ON(offsetof(struct check_req, tail) != 24);
	BUILD_BUG_ON(sizeof(struct check_req) != 32);

	kmemgdb_check_cache = kmemgdb_check_create("kmemgdb_check");
	if (!kmemgdb_check_cache)
		return -ENOMEM;
	kmemgdb_check_notrack_cache = kmemgdb_check_create("kmemgdb_check_notrack");
	if (!kmemgdb_check_notrack_cache) {
		kmem_cache_destroy(kmemgdb_check_cache);
		return -ENOMEM;
	}
	kmemgdb_check_file = debugfs_create_file("kmemgdb_check", 0200, NULL, NULL,
						 &kmemgdb_check_fops);
	pr_info("kmemgdb_check: loaded, caches kmemgdb_check %px kmemgdb_check_notrack %px\n",
		kmemgdb_check_cache, kmemgdb_check_notrack_cache);
	return 0;
}

static void __exit kmemgdb_check_exit(void)
{
	debugfs_remove(kmemgdb_check_file);
	kmem_cache_destroy(kmemgdb_check_notrack_cache);
	kmem_cache_destroy(kmemgdb_check_cache);
}

module_init(kmemgdb_check_init);
module_exit(kmemgdb_check_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmemgdb kmemcheck acceptance module: one precise slab access per command");
