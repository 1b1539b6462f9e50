/* Basic fixed-width types and small helpers for jmig's JOS user library. */
#ifndef JOS_INC_TYPES_H
#define JOS_INC_TYPES_H

#ifndef NULL
#define NULL ((void *) 0)
#endif

typedef _Bool bool;
enum { false = 0, true = 1 };

typedef signed char		int8_t;
typedef unsigned char		uint8_t;
typedef short			int16_t;
typedef unsigned short		uint16_t;
typedef int			int32_t;
typedef unsigned int		uint32_t;
typedef long long		int64_t;
typedef unsigned long long	uint64_t;

/* Pointers are 32 bits wide on this target. */
typedef int32_t intptr_t;
typedef uint32_t uintptr_t;
typedef uint32_t physaddr_t;

/* Page numbers. */
typedef uint32_t ppn_t;

typedef uint32_t size_t;
typedef int32_t ssize_t;
typedef int32_t off_t;

/* An environment id: generation << ENVGENSHIFT | slot index (see env.h). */
typedef int32_t envid_t;

/* Smaller / larger of two values, each evaluated once. */
#define MIN(_a, _b)						\
({								\
	__typeof__(_a) __min_a = (_a);				\
	__typeof__(_b) __min_b = (_b);				\
	__min_a <= __min_b ? __min_a : __min_b;			\
})
#define MAX(_a, _b)						\
({								\
	__typeof__(_a) __max_a = (_a);				\
	__typeof__(_b) __max_b = (_b);				\
	__max_a >= __max_b ? __max_a : __max_b;			\
})

/* Round down / up to a multiple of n (n need not be a power of two).
 * The result has the type of a. */
#define ROUNDDOWN(a, n)						\
({								\
	uint32_t __rd_a = (uint32_t) (a);			\
	(__typeof__(a)) (__rd_a - __rd_a % (n));		\
})
#define ROUNDUP(a, n)						\
({								\
	uint32_t __ru_n = (uint32_t) (n);			\
	(__typeof__(a)) (ROUNDDOWN((uint32_t) (a) + __ru_n - 1, __ru_n)); \
})

#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))

/* Byte offset of a member within a struct. */
#define offsetof(type, member)	__builtin_offsetof(type, member)

#endif /* !JOS_INC_TYPES_H */
